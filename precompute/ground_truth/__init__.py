"""Models whose answers are known, for the ground-truth tests and benchmarks: the toy model of
superposition that polysemanticity scores are checked against, and the attention-only transformers
(attention.py) that head scores are checked against."""
