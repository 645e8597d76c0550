"""`backprop-lab study NAME`: the sweeps behind one claim, then a report whose verdict is computed
from the measurements (means, Student-t CIs, Welch tests with the difference's CI, Holm-Bonferroni
over the study's tests: backprop_lab.lab.statistics), so a claim that does not hold says so.

Each sweep is an ordinary Hydra multirun of `backprop-lab train -m hydra/launcher=vectorized experiment=study_NAME ...`;
the report lists the exact commands, so every grid can be rerun by hand.
"""
