"""python -m backprop_lab: the same command as backprop-lab."""

from backprop_lab.cli import main

main()
