"""What the pages read: one ``AppState`` per app, kept on its Flask server (no module globals)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar, cast

import flask
import numpy as np
import pandas as pd

from neurodash.app.data import max_by_source
from neurodash.storage import Store
from neurodash.storage.schema import UNIT_FRAME_COLUMNS
from neurodash.storage.sets import ExampleSets

EXTENSION = "neurodash"
T = TypeVar("T")


@dataclass
class AppState:
    """The store an app serves and what is derived from it once, at start-up.

    ``unit_max`` is loaded up front: the probe's background jobs are forked from the server and
    read it from memory, never from DuckDB.
    """

    store: Store
    units: pd.DataFrame = field(repr=False)  # one row per unit: ``Store.units_frame()``
    unit_max: dict[str, np.ndarray] = field(repr=False)  # per source, each unit's max activation
    sets: ExampleSets  # curated sets, in the app-owned file beside the store
    _built: dict[Callable, object] = field(default_factory=dict, repr=False)  # see ``once``
    _building: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def load(cls, store: Store, sets_file: str | os.PathLike | None = None) -> AppState:
        units = store.units_frame()
        return cls(
            store,
            units,
            max_by_source(units, store.sources()),
            ExampleSets.beside(store.path, sets_file).check(),
        )

    def once(self, build: Callable[[AppState], T]) -> T:
        """``build(self)``, computed at the first call and kept: for what every request would otherwise
        rebuild the same (the store is read-only), such as the parts of a page that depend on no
        request. Concurrent first calls build it once."""
        if build not in self._built:
            with self._building:
                if build not in self._built:
                    self._built[build] = build(self)
        return cast(T, self._built[build])

    @cached_property
    def score_metrics(self) -> list[str]:
        return [c for c in self.units.columns if c not in UNIT_FRAME_COLUMNS]

    @cached_property
    def firing_tokens(self) -> np.ndarray:
        """Per row of ``units``: how many tokens the unit fired on (> 0) over the corpus."""
        seen = {s.source_id: s.n_tokens for s in self.store.sources()}
        per_source = self.units.groupby("source_id", sort=False)["source_id"].transform(
            lambda g: seen[g.name]
        )
        return self.units["density"].to_numpy(np.float64) * per_source.to_numpy(np.float64)

    @cached_property
    def keep_bos(self) -> bool:
        """Whether the store's statistics include the BOS position (the probe follows suit)."""
        return bool(json.loads(self.store.meta.get("config") or "{}").get("keep_bos", False))


def attach(server: flask.Flask, state: AppState) -> None:
    server.extensions[EXTENSION] = state


def current() -> AppState:
    """The state of the app handling the current request."""
    return flask.current_app.extensions[EXTENSION]


def permalink(path: str) -> str:
    """The full URL of ``path`` on the server handling the current request."""
    return flask.request.host_url.rstrip("/") + path
