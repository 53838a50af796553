"""neurodash: see what every neuron and SAE feature of a transformer does.

>>> import neurodash
>>> store = neurodash.open_store("demo.duckdb")  # doctest: +SKIP
>>> store.units_frame().sort_values("max_act").tail()  # doctest: +SKIP
"""

from neurodash.errors import NeurodashError
from neurodash.store import Store, open_store
from neurodash.units import Example, LogitEffect, Source, UnitRef, UnitStats, parse_ref

__all__ = [
    "Example", "LogitEffect", "NeurodashError", "Source", "Store", "UnitRef", "UnitStats", "open_store", "parse_ref",
]
