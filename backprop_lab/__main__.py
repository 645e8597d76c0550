"""python -m backprop_lab: the same command as backprop-lab."""

from .cli import main

main()
