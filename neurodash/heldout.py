"""Held-out text for scoring explanations: corpus windows a store never read, run through its model.

    held = fresh_heldout("demo.duckdb", layers=(15,), tokens=8192)   # -> demo.heldout.duckdb

The store's own precompute settings (model, corpus and its sample, ctx, dtype, SAEs, examples kept)
are read from its meta, and a lean pass (``precompute.pipeline.heldout.run_heldout``) reads the ``tokens`` that
follow the store's windows in the same corpus stream (``--skip-tokens``: the windows are disjoint),
for the explained layers only (their neurons and SAEs; no heads, no scores), into a small store
beside it. Each unit's windows there (strongest, quantile-sampled and quietest, firing and not) are
the held-out text it is scored on; the explainer still sees the main store's examples. A held-out
store already there is used again when its settings match and it holds the layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neurodash import paths
from neurodash.config import AccumulatorConfig, PrecomputeConfig
from neurodash.errors import NeurodashError

if TYPE_CHECKING:
    from neurodash.storage import Store

DEFAULT_TOKENS = 8192  # 64 windows of 128; the demo's layer 15 and its SAE: 76 s of CPU time (README)
STORE_WINDOWS = "store windows"  # scored on the store's own windows that the explainer was not shown
FRESH = "fresh"  # scored on the held-out store's windows
_MATCHED = ("model", "dataset", "split", "text_column", "shuffle", "sample_seed", "ctx", "keep_bos", "dtype")
_MATCHED += ("skip_tokens", "tokens", "examples")
NO_FRESH = "pass --no-fresh to score on the store's own windows instead"


def heldout_path(store_path: str | os.PathLike) -> Path:
    return paths.beside(store_path, "heldout")


@dataclass(frozen=True)
class HeldOutText:
    """Where explanations are scored: a held-out store (``path``), or the store's own windows (None)."""

    path: Path | None = None
    skip_tokens: int = 0  # the corpus tokens before the held-out windows (the store's)
    n_tokens: int = 0  # tokens the held-out pass read

    def record(self) -> dict:
        """What an explanation keeps of the text it was scored on (``details["held_out"]``)."""
        if self.path is None:
            return {"text": STORE_WINDOWS}
        return {
            "text": FRESH,
            "file": self.path.name,
            "skip_tokens": self.skip_tokens,
            "tokens": self.n_tokens,
        }


def fresh_heldout(
    store_path: str | os.PathLike,
    layers: Sequence[int],
    tokens: int = DEFAULT_TOKENS,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> HeldOutText:
    """The held-out store of ``layers`` beside the store (``out``), built unless one that matches is there."""
    from neurodash.storage import Store

    out = Path(out) if out is not None else heldout_path(store_path)
    with Store(store_path) as store:
        cfg = heldout_config(store, layers, tokens, out)
    have = _matching_layers(out, cfg)
    if have is None or not set(layers) <= have:
        if have:  # keep the layers it held (other units' scores were read from them)
            cfg = dataclasses.replace(cfg, layers=tuple(sorted(have | set(layers))))
        _build(cfg, progress)
    with Store(out) as held:
        n_tokens = int(held.meta.get("n_tokens") or 0)
    return HeldOutText(out, cfg.skip_tokens, n_tokens)


def heldout_config(store: Store, layers: Sequence[int], tokens: int, out: Path) -> PrecomputeConfig:
    """The store's own settings, for ``tokens`` after its windows and for ``layers`` only."""
    raw = store.meta.get("config")
    if not raw:
        raise NeurodashError(f"{store.path} does not record how it was precomputed: {NO_FRESH}")
    main = json.loads(raw)
    main_tokens = int(main.get("tokens") or store.meta.get("n_tokens") or 0)
    ctx = int(main.get("ctx") or 0)
    if tokens < ctx:
        raise NeurodashError(f"--heldout-tokens {tokens} is less than one window of the store's {ctx} tokens")
    fields = {f.name for f in dataclasses.fields(PrecomputeConfig)}
    kept = {k: v for k, v in main.items() if k in fields and k in _MATCHED + ("batch_size", "block_batches")}
    try:
        return PrecomputeConfig(
            **{
                **kept,
                "out": out,
                "layers": tuple(sorted(set(layers))),
                "tokens": tokens,
                "skip_tokens": int(main.get("skip_tokens") or 0) + main_tokens,
                "saes": _saes_on(main.get("saes") or [], layers),
                "examples": AccumulatorConfig(**(main.get("examples") or {})),
                "heads": False,
                "scores": False,
                "overwrite": True,
                "device": "cpu",
            }
        )
    except TypeError as e:  # a config written by another version
        raise NeurodashError(
            f"{store.path} records settings this version cannot read ({e}): {NO_FRESH}"
        ) from None


def _saes_on(specs: Sequence[str], layers: Sequence[int]) -> tuple[str, ...]:
    """The SAEs of ``specs`` on ``layers`` (one whose folder does not say its hook is kept)."""
    return tuple(s for s in specs if _sae_layer(s) in (*layers, None))


def _sae_layer(spec: str) -> int | None:
    """The layer an SAE folder's ``cfg.json`` says it reads (``blocks.L....``), None if it does not say."""
    try:
        hook = json.loads((Path(spec).expanduser() / "cfg.json").read_text())["metadata"]["hook_name"]
        return int(hook.split(".")[1]) if hook.startswith("blocks.") else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _matching_layers(out: Path, cfg: PrecomputeConfig) -> set[int] | None:
    """The layers of the held-out store at ``out`` when it was made with ``cfg``'s settings, else None."""
    from neurodash.storage import Store

    if not out.is_file():
        return None
    try:
        with Store(out) as held:
            theirs = json.loads(held.meta.get("config") or "{}")
            layers = {s.layer for s in held.sources()}
    except NeurodashError:  # damaged or not a store: built again
        return None
    ours = _config_json(cfg)
    if any(theirs.get(k) != ours.get(k) for k in _MATCHED):
        return None
    return layers


def _config_json(cfg: PrecomputeConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _build(cfg: PrecomputeConfig, progress: bool) -> None:
    from precompute.pipeline.heldout import run_heldout

    try:
        run_heldout(cfg, progress=progress)
    except NeurodashError as e:
        raise NeurodashError(f"the held-out pass failed: {e}; {NO_FRESH}") from None
