"""``explain_store``: explain and score a store's units, batch by batch, into the explanations file.

    from neurodash.explain_run import explain_store
    summary = explain_store("demo.duckdb", layers=(15,))            # the offline pattern explainer
    summary = explain_store("demo.duckdb", units=["L15N631"], explainer=LLMExplainer(url, "qwen"))

Units are read a batch at a time (one query per batch), explained, scored and saved, so that an
interrupted run (Ctrl-C, an endpoint that stops answering) keeps every unit it finished; a second run
skips the units the explainer has done already (``redo`` does them again). Without units or layers,
every neuron and SAE feature of the store is explained; attention heads only when named.

With ``fresh_tokens``, units are scored on fresh held-out text: that many corpus tokens after the
store's, run through its model into a held-out store beside it (``neurodash.heldout``); without, on
the held-out windows of the store's own examples. Each explanation records which
(``details["held_out"]``), and a second run redoes the units scored on other text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from neurodash.errors import NeurodashError
from neurodash.explain import PATTERN, Explanation, UnitTexts, explain_unit, split_windows, with_held_out
from neurodash.heldout import HeldOutText, fresh_heldout
from neurodash.storage import Store
from neurodash.storage.explanations import Explanations, unit_windows
from neurodash.units import HEAD, UnitRef, parse_ref

BATCH = 256


class Explainer(Protocol):
    @property
    def name(self) -> str: ...

    def explain(self, texts: UnitTexts, vocab: Sequence[str]) -> Explanation: ...


@runtime_checkable
class Prepares(Protocol):
    """An explainer that works on a whole batch of units first (the model steps run them together)."""

    def prepare(self, store: Store, batch: Sequence[UnitTexts]) -> None: ...


class PatternExplainer:
    """The offline explainer (``neurodash.explain``)."""

    name = PATTERN

    def explain(self, texts: UnitTexts, vocab: Sequence[str]) -> Explanation:
        return explain_unit(texts, vocab)


@dataclass(frozen=True)
class ExplainSummary:
    path: Path  # the explanations file
    explainer: str
    done: int  # explained in this run
    skipped: int  # explained before
    seconds: float
    interrupted: bool = False


# done, total: called once the units are counted, then after each batch
Progress = Callable[[int, int], None]


def select_units(store: Store, units: Sequence[str] = (), layers: Sequence[int] = ()) -> list[UnitRef]:
    """The units named (``L15N3``, ``L15.sae/7``), else every neuron and feature of ``layers`` (or all
    layers); a unit or layer the store lacks is refused with one line."""
    sources = store.sources()
    if units:
        refs = [parse_ref(u, sources) for u in units]
        return sorted(dict.fromkeys(refs))
    explained = [s for s in sources if s.kind != HEAD and (not layers or s.layer in layers)]
    missing = sorted(set(layers) - {s.layer for s in explained})
    if missing:
        have = sorted({s.layer for s in sources if s.kind != HEAD})
        raise NeurodashError(
            f"no neurons or features of layer {', '.join(map(str, missing))} in {store.path} (layers {_ranges(have)})"
        )
    return [UnitRef(s.source_id, u) for s in explained for u in range(s.n_units)]


def _ranges(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers else "none"


def explain_store(
    store_path: str | os.PathLike,
    units: Sequence[str] = (),
    layers: Sequence[int] = (),
    explainer: Explainer | None = None,
    out: str | os.PathLike | None = None,
    redo: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
    fresh_tokens: int | None = None,
) -> ExplainSummary:
    """Explain and score units (see the module's docstring); ``out`` is the explanations file
    (default: beside the store)."""
    explainer = explainer or PatternExplainer()
    file = Explanations.beside(store_path, out).check()
    began = time.perf_counter()
    with Store(store_path) as store:
        refs = select_units(store, units, layers)
        held = HeldOutText()
        if fresh_tokens is not None:
            if any(store.source(r.source_id).kind == HEAD for r in refs):
                raise NeurodashError(
                    "attention heads are scored on the store's own windows: pass --no-fresh for them"
                )
            layers_of = {store.source(r.source_id).layer for r in refs}
            held = fresh_heldout(store_path, sorted(layers_of), fresh_tokens, progress=progress is not None)
        record = held.record()
        done_before = set() if redo else file.explained(explainer.name, record) & set(refs)
        todo = [r for r in refs if r not in done_before]
        vocab = store.vocab
        done = 0
        if progress:
            progress(0, len(todo))
        try:
            for chunk in _batches(todo, batch):
                finished: list[Explanation] = []
                try:
                    batch_texts = list(_unit_texts(store, chunk, held))
                    if isinstance(explainer, Prepares):
                        explainer.prepare(store, batch_texts)
                    for texts in batch_texts:
                        e = explainer.explain(texts, vocab)
                        finished.append(dataclasses.replace(e, details={**e.details, "held_out": record}))
                finally:
                    file.save(finished)  # what was finished, even when the batch stopped half way
                    done += len(finished)
                if progress:
                    progress(done, len(todo))
        except KeyboardInterrupt:
            return ExplainSummary(file.path, explainer.name, done, len(done_before), _since(began), True)
    return ExplainSummary(file.path, explainer.name, done, len(done_before), _since(began))


def _since(began: float) -> float:
    return time.perf_counter() - began


def _batches(refs: list[UnitRef], size: int) -> Iterator[list[UnitRef]]:
    for i in range(0, len(refs), size):
        yield refs[i : i + size]


def _unit_texts(
    store: Store, refs: Sequence[UnitRef], held: HeldOutText | None = None
) -> Iterator[UnitTexts]:
    """Each unit's shown and held-out windows (one query per source in ``refs``, and one in the
    held-out store, if any); a unit without examples gets empty ones (and no score)."""
    by_source: dict[str, list[int]] = {}
    for r in refs:
        by_source.setdefault(r.source_id, []).append(r.unit)
    with Store(held.path) if held and held.path else contextlib.nullcontext() as fresh:
        for source_id, indices in by_source.items():
            found = unit_windows(store, source_id, indices)
            fresh_found = {}
            if fresh:
                fresh.source(source_id)  # one line where the held-out store lacks it
                fresh_found = unit_windows(fresh, source_id, indices)
            for unit in indices:
                max_act, windows = found.get(unit, (0.0, []))
                texts = split_windows(UnitRef(source_id, unit), max_act, windows)
                if fresh:
                    texts = with_held_out(texts, fresh_found.get(unit, (0.0, []))[1])
                yield texts
