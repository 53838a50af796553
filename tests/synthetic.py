"""A synthetic store: random but plausible units, examples, logits and neighbors, written fast.

Used by the app's tests and by ``benchmarks/app_speed.py`` (100k units). Every layer is one
neuron source ``L{layer}.mlp``; every sequence is ``ctx`` tokens long and every example window
covers a whole sequence, so ``start`` is always 0. With ``head_layers``, each of those layers also has
a source of attention heads ``L{layer}.attn`` laid out as HEADS_SCHEMA.md says: output norms as the
activations, one stored query row per example in ``attention``, OV logits and the head metrics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurodash.storage import StoreWriter
from neurodash.units import (
    HEAD,
    HEAD_METRICS,
    NEURON,
    SAE_FEATURE,
    Source,
    head_source_id,
    neuron_source_id,
    sae_source_id,
)

MODEL = "synthetic"
N_QUANTILE_GROUPS = 5
N_LOGITS = 10
N_NEIGHBORS = 10
HIST_BINS = 24
# Untrusted corpus text that would run script, or make a request, if it were ever rendered as HTML.
XSS_TOKENS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<img src=x onerror="window.__pwned=1">',
    '<img src=x onerror="window.__xss=1">',
    "<link rel=stylesheet href=http://127.0.0.1:9/x.css>",
)


def make_synthetic_store(
    path: str | os.PathLike,
    n_layers: int,
    n_units: int,
    n_examples: int = 45,
    ctx: int = 32,
    vocab_size: int = 500,
    seed: int = 0,
    tokens: Sequence[str] | None = None,
    score_metrics: Sequence[str] = (),
    n_sequences: int = 1024,
    overwrite: bool = True,
    sae_layers: Sequence[int] = (),
    head_layers: Sequence[int] = (),
    n_heads: int = 4,
    model: str = MODEL,
) -> Path:
    """Write a store of ``n_layers`` neuron sources of ``n_units`` units each; return its path.

    ``sae_layers`` adds an SAE source (``L{layer}.sae``, ``n_units`` features) for each layer given,
    linked to that layer's neurons (neuron i to features i, i+1, i+2; each feature back to the
    neurons that link to it; by strong firing, neuron i to features i+2, i), with its last feature
    dead (density 0).

    ``tokens`` (e.g. strings that look like HTML) become the first vocabulary entries, appear at
    positions 1, 2, ... of every sequence (so every example shows them) and are every unit's top
    boosted tokens.

    ``head_layers`` adds ``n_heads`` attention heads (source ``L{layer}.attn``) for each layer given.
    ``model`` is the model the store names (the probe runs it: a real one's name or folder, for a probe test).
    """
    rng = np.random.default_rng(seed)
    vocab = _vocab(vocab_size, list(tokens or ()))
    sequences = _sequences(rng, n_sequences, ctx, len(vocab), n_injected=len(tokens or ()))
    with StoreWriter(path, overwrite=overwrite) as writer:
        writer.append(
            "vocab",
            {
                "model": [model] * len(vocab),
                "token_id": np.arange(len(vocab), dtype=np.int32),
                "token": vocab,
            },
        )
        writer.append(
            "sequences",
            {
                "seq_id": np.arange(n_sequences, dtype=np.int64),
                "doc_id": np.arange(n_sequences, dtype=np.int64) // 4,
                "start": np.zeros(n_sequences, dtype=np.int64),
                "token_ids": sequences,
            },
        )
        n_tokens = n_sequences * ctx
        layers = [(layer, NEURON) for layer in range(n_layers)] + [
            (layer, SAE_FEATURE) for layer in sae_layers
        ]
        for layer, kind in layers:
            sid = neuron_source_id(layer) if kind == NEURON else sae_source_id(layer)
            hook = f"blocks.{layer}.mlp.hook_post" if kind == NEURON else f"blocks.{layer}.hook_resid_post"
            writer.add_source(Source(sid, model, hook, kind, layer, n_units, n_tokens))
            stats = _units(rng, sid, n_units, n_tokens)
            if kind == SAE_FEATURE:
                stats["density"][-1] = 0.0
            writer.append("units", stats)
            writer.append(
                "examples",
                _examples(rng, sid, stats["max_act"], stats["min_act"], n_examples, ctx, n_sequences),
            )
            writer.append("logits", _logits(rng, sid, n_units, len(vocab), n_injected=len(tokens or ())))
            writer.append("neighbors", _neighbors(rng, sid, n_units))
            if score_metrics:
                writer.append("scores", _scores(rng, sid, n_units, score_metrics))
            if kind == SAE_FEATURE and layer < n_layers:
                for table in _links(neuron_source_id(layer), sid, n_units):
                    writer.append("links", table)
                writer.append("links_strong", _strong_links(neuron_source_id(layer), sid, n_units))
        for layer in head_layers:
            _write_heads(
                writer, rng, layer, n_heads, n_examples, ctx, n_sequences, len(vocab), tokens or (), model
            )
        writer.set_meta(model=model, dataset="synthetic", ctx=ctx, n_tokens=n_tokens)
        return writer.commit()


def _vocab(size: int, injected: list[str]) -> list[str]:
    words = ["the", "neuron", "fires", "on", "code", "def", "return", "(", ")", ":", ",", ".", "=", "if"]
    generated = []
    for i in range(max(size - len(injected), 4)):
        word = f"{words[i % len(words)]}{i // len(words) or ''}"
        generated.append(("\n" if i % 17 == 3 else " " if i % 3 else "") + word)
    return injected + generated


def _sequences(rng: np.random.Generator, n: int, ctx: int, vocab_size: int, n_injected: int) -> np.ndarray:
    ids = rng.integers(n_injected, vocab_size, size=(n, ctx), dtype=np.int32)
    shown = min(n_injected, ctx - 1)
    ids[:, 1 : 1 + shown] = np.arange(shown, dtype=np.int32)
    return ids


def _units(rng: np.random.Generator, sid: str, n: int, n_tokens: int) -> dict:
    max_act = rng.lognormal(0.5, 0.6, n).astype(np.float32)
    min_act = -rng.lognormal(-1.5, 0.5, n).astype(np.float32)
    edges = [
        np.linspace(lo, hi, HIST_BINS + 1, dtype=np.float32) for lo, hi in zip(min_act, max_act, strict=True)
    ]
    centres = np.linspace(0, 1, HIST_BINS)
    counts = (
        n_tokens * np.exp(-8 * np.abs(centres - 0.15))[None, :] * rng.uniform(0.02, 0.1, (n, 1))
    ).astype(np.int64)
    return {
        "source_id": [sid] * n,
        "unit": np.arange(n, dtype=np.int32),
        "max_act": max_act,
        "min_act": min_act,
        "mean_act": (rng.normal(0, 0.05, n)).astype(np.float32),
        "std_act": rng.uniform(0.05, 0.5, n).astype(np.float32),
        "skew": rng.normal(1, 1, n).astype(np.float32),
        "kurtosis": rng.lognormal(1.5, 0.7, n).astype(np.float32),
        "density": rng.beta(2, 5, n).astype(np.float32),
        "n_tokens": np.full(n, n_tokens, dtype=np.int64),
        "hist_edges": edges,
        "hist_counts": list(counts + 1),
    }


def bucket_plan(n_examples: int) -> list[tuple[str, int]]:
    """(bucket, rank) per example: about 4/9 top, 1/9 bottom, the rest in quantile groups."""
    n_top, n_bottom = -(-n_examples * 4 // 9), n_examples // 9
    plan = [("top", r) for r in range(n_top)]
    n_quant = n_examples - n_top - n_bottom
    for g in reversed(range(N_QUANTILE_GROUPS)):
        size = n_quant // N_QUANTILE_GROUPS + (g >= N_QUANTILE_GROUPS - n_quant % N_QUANTILE_GROUPS)
        plan += [(f"q{g / N_QUANTILE_GROUPS:.2f}", r) for r in range(size)]
    return plan + [("bottom", r) for r in range(n_bottom)]


def _examples(
    rng: np.random.Generator,
    sid: str,
    max_act: np.ndarray,
    min_act: np.ndarray,
    n_examples: int,
    ctx: int,
    n_sequences: int,
) -> dict:
    """Windows of low noise with one peak each: top peaks near the unit's max, bottom near its min."""
    plan = bucket_plan(n_examples)
    n_units, k = len(max_act), len(plan)
    strength = np.array([_strength(b, r, k) for b, r in plan], dtype=np.float32)
    scale = np.where(strength[None, :] >= 0, max_act[:, None], -min_act[:, None])
    acts = rng.normal(0, 0.03, (n_units, k, ctx)).astype(np.float32) * max_act[:, None, None]
    pos = rng.integers(0, ctx, (n_units, k))
    np.put_along_axis(acts, pos[..., None], (strength[None, :] * scale)[..., None], axis=2)
    return {
        "source_id": [sid] * (n_units * k),
        "unit": np.repeat(np.arange(n_units, dtype=np.int32), k),
        "bucket": [b for b, _ in plan] * n_units,
        "rank": np.tile([r for _, r in plan], n_units).astype(np.int32),
        "seq_id": rng.integers(0, n_sequences, n_units * k).astype(np.int64),
        "pos": pos.reshape(-1).astype(np.int32),
        "start": np.zeros(n_units * k, dtype=np.int32),
        "acts": acts.reshape(n_units * k, ctx),
    }


def _strength(bucket: str, rank: int, n: int) -> float:
    """The example's peak as a fraction of the unit's max (or of its min, negative)."""
    if bucket == "top":
        return 1.0 - 0.005 * rank
    if bucket == "bottom":
        return -(1.0 - 0.05 * rank)
    return max(0.9 * (float(bucket[1:]) + 0.19 - 0.01 * rank), 0.01)


def _logits(rng: np.random.Generator, sid: str, n: int, vocab_size: int, n_injected: int) -> dict:
    """Random top tokens, except that each unit's top boosted ones are the injected tokens."""
    rows = n * 2 * N_LOGITS
    token_ids = rng.integers(n_injected, vocab_size, (n, 2 * N_LOGITS)).astype(np.int32)
    shown = min(n_injected, N_LOGITS)
    token_ids[:, :shown] = np.arange(shown)
    values = (
        np.sort(rng.lognormal(0, 0.4, (n, 2, N_LOGITS)), axis=2)[..., ::-1] * np.array([1, -1])[None, :, None]
    )
    return {
        "source_id": [sid] * rows,
        "unit": np.repeat(np.arange(n, dtype=np.int32), 2 * N_LOGITS),
        "sign": (["+"] * N_LOGITS + ["-"] * N_LOGITS) * n,
        "rank": np.tile(np.arange(N_LOGITS), 2 * n).astype(np.int32),
        "token_id": token_ids.reshape(-1),
        "value": values.reshape(-1).astype(np.float32),
    }


def _neighbors(rng: np.random.Generator, sid: str, n: int) -> dict:
    k = min(N_NEIGHBORS, n - 1)
    units = np.repeat(np.arange(n), k)
    offsets = np.tile(np.arange(1, k + 1), n)  # distinct and never the unit itself (k < n)
    cosine = np.sort(rng.uniform(0.05, 0.6, (n, k)), axis=1)[:, ::-1]
    return {
        "source_id": [sid] * (n * k),
        "unit": units.astype(np.int32),
        "rank": np.tile(np.arange(k), n).astype(np.int32),
        "neighbor": ((units + offsets) % n).astype(np.int32),
        "cosine": cosine.reshape(-1).astype(np.float32),
    }


def _links(neurons: str, features: str, n: int) -> tuple[dict, dict]:
    """Neuron i -> features i, i+1, i+2 (shares 0.5, 0.3, 0.2); feature f -> neurons f, f-1, f-2."""
    units = np.repeat(np.arange(n), 3)
    others = (units + np.tile([0, 1, 2], n)) % n
    common = {
        "rank": np.tile(np.arange(3), n).astype(np.int32),
        "weight": np.tile([0.4, -0.3, 0.2], n).astype(np.float32),
        "share": np.tile([0.5, 0.3, 0.2], n).astype(np.float32),
    }

    def table(sid, target, unit, target_unit):
        return {
            "source_id": [sid] * len(unit),
            "unit": unit.astype(np.int32),
            "rank": common["rank"],
            "target_source_id": [target] * len(unit),
            "target_unit": target_unit.astype(np.int32),
            "weight": common["weight"],
            "share": common["share"],
        }

    back = np.repeat(np.arange(n), 3)
    return table(neurons, features, units, others), table(
        features, neurons, back, (back - np.tile([0, 1, 2], n)) % n
    )


def _strong_links(neurons: str, features: str, n: int) -> dict:
    """Neuron i -> features i+2, i (shares 0.7, 0.3 of its strong firing)."""
    units = np.repeat(np.arange(n), 2)
    return {
        "source_id": [neurons] * len(units),
        "unit": units.astype(np.int32),
        "rank": np.tile(np.arange(2), n).astype(np.int32),
        "target_source_id": [features] * len(units),
        "target_unit": ((units + np.tile([2, 0], n)) % n).astype(np.int32),
        "weight": np.tile([0.2, 0.4], n).astype(np.float32),
        "share": np.tile([0.7, 0.3], n).astype(np.float32),
    }


def _scores(rng: np.random.Generator, sid: str, n: int, metrics: Sequence[str]) -> dict:
    m = len(metrics)
    return {
        "source_id": [sid] * (n * m),
        "unit": np.repeat(np.arange(n, dtype=np.int32), m),
        "metric": list(metrics) * n,
        "value": rng.uniform(0, 1, n * m),
    }


def _write_heads(
    writer: StoreWriter,
    rng: np.random.Generator,
    layer: int,
    n_heads: int,
    n_examples: int,
    ctx: int,
    n_sequences: int,
    vocab_size: int,
    injected: Sequence[str],
    model: str,
) -> None:
    """One layer's heads: norms (never negative, density 1), examples with their query rows, logits, metrics."""
    sid = head_source_id(layer)
    n_tokens = n_sequences * ctx
    hook = f"blocks.{layer}.attn.hook_z"
    writer.add_source(
        Source(sid, model, hook, HEAD, layer, n_heads, n_tokens, config={"activation": "z_norm"})
    )
    stats = _units(rng, sid, n_heads, n_tokens)
    stats["min_act"] = rng.uniform(0.01, 0.1, n_heads).astype(np.float32)
    stats["mean_act"] = (stats["max_act"] * 0.3).astype(np.float32)
    stats["density"] = np.ones(n_heads, dtype=np.float32)
    writer.append("units", stats)
    examples = _examples(rng, sid, stats["max_act"], stats["min_act"], n_examples, ctx, n_sequences)
    keep = np.array([b != "bottom" for b in examples["bucket"]])  # norms: no negative side
    examples = {
        k: [v[i] for i in np.flatnonzero(keep)] if isinstance(v, list) else v[keep]
        for k, v in examples.items()
    }
    examples["acts"] = np.abs(examples["acts"])
    writer.append("examples", examples)
    writer.append("attention", _attention(rng, examples, ctx))
    writer.append("logits", _logits(rng, sid, n_heads, vocab_size, n_injected=len(injected)))
    metrics = _scores(rng, sid, n_heads, HEAD_METRICS)
    writer.append("scores", metrics)


def _attention(rng: np.random.Generator, examples: dict, ctx: int) -> dict:
    """Each example's query row: a softmax over the window up to its query position, 0 after it."""
    pos = np.asarray(examples["pos"])
    logits = rng.normal(0, 2, (len(pos), ctx))
    logits[:, 0] += 2  # a sink on the first token, as real heads have
    logits[np.arange(ctx)[None, :] > pos[:, None]] = -np.inf
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    return {
        "source_id": examples["source_id"],
        "unit": examples["unit"],
        "bucket": examples["bucket"],
        "rank": examples["rank"],
        "pattern": weights.astype(np.float32),
        "before": np.zeros(len(pos), np.float32),  # every window starts at the sequence's start
    }
