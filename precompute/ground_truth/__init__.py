"""Models whose answers are known, for the ground-truth tests and benchmarks:

- ``superposition``: the toy model of superposition (``ToyConfig``, ``ground_truth``) that the
  polysemanticity scores are checked against, scored by the pipeline's own functions;
- ``attention``: attention-only transformers whose heads are known (one built by hand, one trained
  to develop a previous-token and an induction head) that the head scores are checked against.
"""
