"""Features that run a live model on demand, apart from the pipeline (the circuit lab will join them):

- ``cache``: the one cache of loaded models and SAEs per process (``cached_model``, ``cached_sae``);
- ``probe``: every unit's activation on one text, token by token (``probe_text``);
- ``maximize``: activation maximization, prompts that drive a unit hard (``maximize``, ``maximize_many``).

The app reaches them lazily, inside background callbacks, through ``probe`` and ``maximize``.
"""
