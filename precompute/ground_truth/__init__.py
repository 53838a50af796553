"""Models whose answers are known, for the ground-truth tests and benchmarks:

- ``superposition``: the toy model of superposition (``ToyConfig``, ``ground_truth``) that the
  polysemanticity scores are checked against, scored by the pipeline's own functions.
"""
