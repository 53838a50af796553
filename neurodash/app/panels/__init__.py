"""The pages' panels, each with its layout and, beside it, its callbacks (``register_callbacks``).

Unit page (``pages/unit.py``; its callbacks read the unit from ``current_unit``): ``downloads``,
``neighbors`` (nearest units, neuron-feature links), ``polysemanticity`` (also the overview's ranking),
``sets`` (add to a curated set), ``maximize`` (activation maximization, a background job).
Overview: ``units_table``, ``sparsity`` (the sparsest units). Text probe: ``text_probe`` (a background job), ``probe_runs`` (its saved runs),
``probe_attention``. Sets page: ``set_manager``.
"""
