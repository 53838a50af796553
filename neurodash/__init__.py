"""neurodash: see what every neuron and SAE feature of a transformer does.

(``neurodash.export`` is the export module; its ``export`` function is not re-exported here, so
that the module's name keeps meaning the module.)

>>> import neurodash
>>> store = neurodash.open_store("demo.duckdb")  # doctest: +SKIP
>>> store.units_frame().sort_values("max_act").tail()  # doctest: +SKIP
"""

from neurodash.errors import NeurodashError
from neurodash.export import Selection, examples_frame
from neurodash.storage import Store, open_store
from neurodash.units import Example, LogitEffect, Source, UnitRef, UnitStats, parse_layers, parse_ref

__all__ = [
    "Example",
    "LogitEffect",
    "NeurodashError",
    "Selection",
    "Source",
    "Store",
    "UnitRef",
    "UnitStats",
    "examples_frame",
    "open_store",
    "parse_layers",
    "parse_ref",
]
