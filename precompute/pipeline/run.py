"""The precompute pipeline: corpus -> one streaming pass through the model -> a store.

>>> from precompute import PrecomputeConfig, run_precompute
>>> run_precompute(PrecomputeConfig(layers=(0, 15), tokens=8192, out="store.duckdb"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.errors import NeurodashError
from neurodash.storage import StoreWriter, check_writable
from neurodash.units import NEURON, SAE_FEATURE, Source, neuron_source_id, sae_source_id
from precompute.corpus import DEFAULT_DATASET, load_corpus, pack_windows
from precompute.models import DEFAULT_MODEL, LoadedModel, layer_of, load_model, mlp_hook, mlp_input_hook
from precompute.pipeline.accumulate import NO_KEY, AccumulatorConfig, UnitAccumulator, hist_edges
from precompute.pipeline.polysemanticity import (
    attribution_sums,
    bimodality,
    combined,
    effective_number,
    example_scores,
    feature_shares,
    kept_examples,
    mass_from_sums,
    n_covering,
    projection,
)


@dataclass(frozen=True)
class PrecomputeConfig:
    out: str | Path
    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    split: str = "train"
    text_column: str = "text"
    layers: tuple[int, ...] | None = None  # None: every layer
    tokens: int = 65_536
    ctx: int = 128
    batch_size: int = 8
    device: str = "cpu"
    keep_bos: bool = False  # keep the first (BOS) position in the examples and statistics
    saes: tuple[str, ...] = ()  # SAELens folders or release/sae_id: their features are units too
    n_logits: int = 10
    n_neighbors: int = 10
    scores: bool = True  # polysemanticity scores (precompute.polysemanticity); off for a bare pass
    context_dims: int = 32  # dimensions of the random projection kept per example for context clusters
    overwrite: bool = False
    examples: AccumulatorConfig = field(default_factory=AccumulatorConfig)

    def __post_init__(self):
        for name in ("tokens", "ctx", "batch_size"):
            if getattr(self, name) < 1:
                raise NeurodashError(f"--{name.replace('_', '-')} must be at least 1")
        if self.tokens < self.ctx:
            raise NeurodashError(f"--tokens {self.tokens} is less than one window (--ctx {self.ctx})")


@dataclass
class _Tracked:
    """A source being accumulated: its metadata, the hook it reads, its directions, its state."""

    source: Source
    hook: str
    directions: Tensor  # [n_units, d_model]: what each unit writes to the residual stream
    acc: UnitAccumulator
    encode: Callable[[Tensor], Tensor] | None = None  # hook activations -> unit activations (SAEs)
    decoder: Tensor | None = None  # SAEs: [n_units, d_in] decoder rows, in the hook's space
    decoder_up: Tensor | None = None  # SAEs on tracked neurons: the decoder's positive part, on the device
    attribution: Tensor | None = None  # and their ``attribution_sums`` so far: [n_units, d_in]
    context_hook: str | None = None  # the representation kept at each example's token (scores)


def _context_hook(model: LoadedModel, hook: str) -> str:
    """The MLP input of the hook's layer where the model has that hook, else the hook itself."""
    wanted = mlp_input_hook(layer_of(hook))
    return wanted if model.has_hook(wanted) else hook


def run_precompute(cfg: PrecomputeConfig, progress: bool = True) -> Path:
    """Stream the corpus through the model once and write a store to ``cfg.out``."""
    out = Path(cfg.out)
    check_writable(out, cfg.overwrite)
    dataset = load_corpus(cfg.dataset, cfg.split, cfg.text_column)
    model = load_model(cfg.model, cfg.device)
    layers = _check_layers(cfg.layers, model)
    first = 0 if cfg.keep_bos or model.bos_token_id is None else 1
    tracked = [_neurons(model, layer, cfg) for layer in layers]
    tracked += _features(model, cfg)
    neuron_hooks = {t.hook for t in tracked if t.source.kind == NEURON}
    for t in tracked:  # an SAE on tracked neurons: the bridge between them (``_write_links``)
        if t.decoder is not None and t.hook in neuron_hooks:
            t.decoder_up = t.decoder.to(cfg.device, torch.float32).clamp(min=0)
            t.attribution = torch.zeros(t.decoder.shape, dtype=torch.float64, device=cfg.device)
    hooks = list(dict.fromkeys(t.hook for t in tracked))
    model.check_hooks(hooks)
    if cfg.scores:  # context clusters compare what each unit's layer reads at the example's token
        for t in tracked:
            t.context_hook = _context_hook(model, t.hook)
        hooks = list(dict.fromkeys([*hooks, *(t.context_hook for t in tracked)]))

    contexts = _Contexts(cfg.context_dims, cfg.device, cfg.examples.seed) if cfg.scores else None
    with StoreWriter(out, overwrite=cfg.overwrite) as writer:
        n_tokens, phase_seconds = _stream(
            model, dataset, cfg, tracked, hooks, first, writer, progress, contexts
        )
        writer.append("vocab", _vocab(model))
        unembed = model.unembed().to(cfg.device)
        for t in tqdm(tracked, desc="writing", unit="source", disable=not progress):
            t.source = dataclasses.replace(t.source, n_tokens=n_tokens)
            _write_source(writer, t, unembed, cfg, contexts)
        _write_links(writer, tracked, cfg.n_neighbors)
        writer.set_meta(
            model=cfg.model,
            dataset=cfg.dataset,
            ctx=cfg.ctx,
            n_tokens=n_tokens,
            phase_seconds=json.dumps({k: round(v, 3) for k, v in phase_seconds.items()}),
            config=json.dumps(_config_dict(cfg)),
        )
        return writer.commit()


def _check_layers(layers: tuple[int, ...] | None, model: LoadedModel) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise NeurodashError(
            f"layer {bad[0]} is out of range: {model.name} has layers 0-{model.n_layers - 1}"
        )
    return layers


def _neurons(model: LoadedModel, layer: int, cfg: PrecomputeConfig) -> _Tracked:
    source = Source(
        source_id=neuron_source_id(layer),
        model=cfg.model,
        hook=mlp_hook(layer),
        kind=NEURON,
        layer=layer,
        n_units=model.d_mlp,
        n_tokens=0,
        config=_config_dict(cfg),
    )
    acc = UnitAccumulator(model.d_mlp, cfg.ctx, cfg.examples, cfg.device)
    return _Tracked(source, source.hook, model.mlp_out_directions(layer), acc)


def _features(model: LoadedModel, cfg: PrecomputeConfig) -> list[_Tracked]:
    """One source per SAE: its features, read from its hook in the same pass as the neurons."""
    from precompute.sae import load_sae

    saes = [load_sae(spec, cfg.device) for spec in cfg.saes]
    per_layer = Counter(layer_of(sae.hook) for sae in saes)
    tracked = []
    for spec, sae in zip(cfg.saes, saes):
        sae.check_fits(model)
        layer = layer_of(sae.hook)
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", sae.name).strip("-") if per_layer[layer] > 1 else ""
        source = Source(
            source_id=sae_source_id(layer, slug),
            model=cfg.model,
            hook=sae.hook,
            kind=SAE_FEATURE,
            layer=layer,
            n_units=sae.d_sae,
            n_tokens=0,
            sae=sae.name,
            config={**_config_dict(cfg), "sae_metrics": _sae_metrics(spec)},
        )
        acc = UnitAccumulator(sae.d_sae, cfg.ctx, cfg.examples, cfg.device)
        tracked.append(
            _Tracked(
                source, sae.hook, sae.residual_directions(model), acc, sae.encode, sae.decoder_directions()
            )
        )
    if len({t.source.source_id for t in tracked}) < len(tracked):
        raise NeurodashError("two --sae options name the same SAE")
    return tracked


def _sae_metrics(spec: str) -> dict:
    """The held-out metrics ``train-sae`` saved beside an SAE (explained variance, L0, dead), if any."""
    from precompute.sae import METRICS_FILE

    path = Path(spec) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _config_dict(cfg: PrecomputeConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["out"] = str(d["out"])
    return d


def _stream(
    model, dataset, cfg, tracked, hooks, first, writer, progress, contexts=None
) -> tuple[int, dict[str, float]]:
    """The one pass: run each batch once, update every source, append its sequences.

    Returns the tokens read and the seconds spent in each phase (tokenize, forward, accumulate, write).
    """
    batches = pack_windows(dataset, model.tokenizer, cfg.ctx, cfg.batch_size, cfg.text_column, cfg.tokens)
    total = (cfg.tokens // cfg.ctx) * cfg.ctx
    clock = _PhaseClock(cfg.device)
    n_tokens = 0
    with tqdm(total=total, unit="tok", unit_scale=True, desc="precompute", disable=not progress) as bar:
        while (batch := clock.measure("tokenize", next, batches, None)) is not None:
            acts = clock.measure("forward", model.activations, batch.tokens, hooks)
            with clock.phase("accumulate"):
                at_token = {}
                if contexts is not None:
                    tokens = batch.tokens.to(cfg.device, torch.int32)
                    context_hooks = dict.fromkeys(t.context_hook for t in tracked)
                    at_token = {
                        h: {"rep": contexts.project(h, acts[h], first), "tok": tokens} for h in context_hooks
                    }
                for t in tracked:
                    unit_acts = acts[t.hook] if t.encode is None else t.encode(acts[t.hook])
                    if t.attribution is not None:  # an SAE on tracked neurons: what drives them
                        x, a = acts[t.hook][:, first:].flatten(0, 1), unit_acts[:, first:].flatten(0, 1)
                        t.attribution += attribution_sums(x.float(), a.float(), t.decoder_up).double()
                    t.acc.update(
                        unit_acts,
                        batch.seq_ids,
                        first=first,
                        ctx=cfg.ctx,
                        at_token=at_token.get(t.context_hook),
                    )
            with clock.phase("write"):
                writer.append(
                    "sequences",
                    {
                        "seq_id": batch.seq_ids.numpy(),
                        "doc_id": batch.doc_ids.numpy(),
                        "start": batch.starts.numpy(),
                        "token_ids": batch.tokens.numpy().astype(np.int32),
                    },
                )
            n_tokens += batch.tokens.numel()
            bar.update(batch.tokens.numel())
    return n_tokens, clock.seconds


class _Contexts:
    """Per hook, a fixed random projection of its activation vector at every token (the
    representation that context clusters compare), and the projections' running sum for centring."""

    def __init__(self, dims: int, device: str, seed: int):
        self.dims, self.device, self.seed = dims, device, seed
        self.matrix: dict[str, Tensor] = {}
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def project(self, hook: str, acts: Tensor, first: int) -> Tensor:
        if hook not in self.matrix:
            p = projection(acts.shape[-1], self.dims, self.seed)
            self.matrix[hook] = torch.from_numpy(p).to(self.device)
            self.sums[hook] = torch.zeros(self.dims, dtype=torch.float64, device=self.device)
            self.counts[hook] = 0
        rep = acts.float() @ self.matrix[hook]
        self.sums[hook] += rep[:, first:].sum((0, 1)).double()
        self.counts[hook] += rep.shape[0] * (rep.shape[1] - first)
        return rep.half()

    def mean(self, hook: str) -> np.ndarray:
        if hook not in self.sums:
            return np.zeros(self.dims, dtype=np.float32)
        return (self.sums[hook] / max(self.counts[hook], 1)).float().cpu().numpy()


class _PhaseClock:
    """Wall time per phase of the pass (synchronising the GPU at phase ends, so times are real)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def measure(self, name: str, fn, *args):
        with self.phase(name):
            return fn(*args)


def _vocab(model: LoadedModel) -> dict:
    n = len(model.tokenizer)
    tokens = model.tokenizer.batch_decode([[i] for i in range(n)])
    return {"model": [model.name] * n, "token_id": np.arange(n, dtype=np.int32), "token": tokens}


def _write_source(
    writer: StoreWriter, t: _Tracked, unembed: Tensor, cfg: PrecomputeConfig, contexts=None
) -> None:
    writer.add_source(t.source)
    res = t.acc.result()
    sid = t.source.source_id
    writer.append("units", _units_table(sid, res, cfg.examples.hist_bins))
    writer.append("examples", examples_table(sid, res, cfg.examples))
    if contexts is not None:
        scores, clusters = polysemanticity_tables(sid, res, contexts.mean(t.context_hook), cfg.context_dims)
        writer.append("scores", scores)
        writer.append("clusters", clusters)
    directions = t.directions.to(cfg.device)
    similar = directions if t.decoder is None else t.decoder.to(cfg.device)  # features: decoder cosine
    writer.append("logits", _logits_table(sid, directions, unembed, cfg.n_logits))
    writer.append("neighbors", _neighbors_table(sid, similar, cfg.n_neighbors))


def _units_table(sid: str, res: dict, n_bins: int) -> dict:
    n = len(res["max"])
    edges, counts = [], []
    for w, h in zip(res["bin_width"], res["hist"]):
        nz = np.flatnonzero(h)
        lo, hi = (nz[0], nz[-1] + 1) if len(nz) else (n_bins - 1, n_bins)
        edges.append(hist_edges(w if w > 0 else 1.0, n_bins)[lo : hi + 1].astype(np.float32))
        counts.append(h[lo:hi])
    return {
        "source_id": [sid] * n,
        "unit": np.arange(n, dtype=np.int32),
        "max_act": res["max"],
        "min_act": res["min"],
        "mean_act": res["mean"].astype(np.float32),
        "std_act": res["std"].astype(np.float32),
        "skew": res["skew"].astype(np.float32),
        "kurtosis": res["kurtosis"].astype(np.float32),
        "density": res["density"].astype(np.float32),
        "n_tokens": np.full(n, res["count"], dtype=np.int64),
        "hist_edges": edges,
        "hist_counts": counts,
    }


def examples_table(sid: str, res: dict, cfg: AccumulatorConfig) -> dict:
    """Top and bottom examples where the unit fires (> 0) or goes negative, and quantile groups."""
    parts = []
    top, bottom = res["top"], res["bottom"]
    parts.append(_bucket_rows(top, top["val"] > 0, np.full(top["val"].shape, "top", dtype=object)))
    parts.append(
        _bucket_rows(bottom, bottom["val"] > 0, np.full(bottom["val"].shape, "bottom", dtype=object))
    )
    parts.append(_quantile_rows(res["sample"], cfg.quantile_groups))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cols["rank"], cols["bucket"], cols["unit"]))
    return {
        "source_id": [sid] * len(order),
        "unit": cols["unit"][order].astype(np.int32),
        "bucket": cols["bucket"][order],
        "rank": cols["rank"][order].astype(np.int32),
        "seq_id": cols["seq"][order],
        "pos": cols["pos"][order].astype(np.int32),
        "start": cols["start"][order].astype(np.int32),
        "acts": cols["win"][order],
    }


def polysemanticity_tables(sid: str, res: dict, rep_mean: np.ndarray, dims: int) -> tuple[dict, dict]:
    """The scores (long format, NaN left out) and each kept example's context cluster."""
    n = len(res["max"])
    for part in (res["top"], res["sample"]):  # slots that no example ever entered
        k = part["val"].shape[1]
        part.setdefault("tok", np.zeros((n, k), dtype=np.int32))
        part.setdefault("rep", np.zeros((n, k, dims), dtype=np.float16))
    kept = kept_examples(res["top"], res["sample"])
    ex = example_scores(kept, rep_mean)
    metrics = {
        "context_diversity": ex["context_diversity"],
        "token_diversity": ex["token_diversity"],
        "bimodality": bimodality(res["skew"], res["kurtosis"]),
    }
    metrics["polysemanticity"] = combined(metrics["context_diversity"], metrics["token_diversity"])
    units, names, values = [], [], []
    for name, v in metrics.items():
        ok = np.flatnonzero(np.isfinite(v))
        units.append(ok)
        names.append(np.full(len(ok), name, dtype=object))
        values.append(v[ok])
    units_np = np.concatenate(units)
    scores = {
        "source_id": [sid] * len(units_np),
        "unit": units_np.astype(np.int32),
        "metric": np.concatenate(names),
        "value": np.concatenate(values).astype(np.float64),
    }
    u, j = np.nonzero(kept["valid"])
    clusters = {
        "source_id": [sid] * len(u),
        "unit": u.astype(np.int32),
        "seq_id": kept["seq"][u, j].astype(np.int64),
        "pos": kept["pos"][u, j].astype(np.int32),
        "cluster": ex["cluster"][u, j].astype(np.int32),
    }
    return scores, clusters


def _bucket_rows(e: dict, keep: np.ndarray, bucket: np.ndarray, rank: np.ndarray | None = None) -> dict:
    units, slots = np.nonzero(keep)
    return {
        "unit": units,
        "bucket": bucket[units, slots],
        "rank": (slots if rank is None else rank[units, slots]),
        "seq": e["seq"][units, slots],
        "pos": e["pos"][units, slots],
        "start": e["start"][units, slots],
        "win": e["win"][units, slots],
    }


def _quantile_rows(sample: dict, n_groups: int) -> dict:
    """Sort each unit's sample by value; the i-th of n goes to group floor(i * G / n).

    Group j holds the sample's quantiles [j / G, (j + 1) / G) and is named by its lower bound
    (``q0.00``, ``q0.20``, ...); rank 0 is the group's strongest example.
    """
    valid = sample["key"] < NO_KEY
    vals = np.where(valid, sample["val"], np.inf)
    order = np.argsort(vals, axis=1, kind="stable")
    s = {
        k: np.take_along_axis(v, order.reshape(*order.shape, *[1] * (v.ndim - 2)), 1)
        for k, v in sample.items()
    }
    n = valid.sum(1, keepdims=True)
    i = np.arange(vals.shape[1])[None, :]
    group = (i * n_groups) // np.maximum(n, 1)
    keep = i < n
    in_group_from_top = np.zeros_like(group)
    for g in range(n_groups):  # rank within a group counts down from its strongest member
        members = (group == g) & keep
        in_group_from_top = np.where(members, np.cumsum(members[:, ::-1], 1)[:, ::-1] - 1, in_group_from_top)
    names = np.array([f"q{g / n_groups:.2f}" for g in range(n_groups)], dtype=object)
    return _bucket_rows(s, keep, names[np.minimum(group, n_groups - 1)], in_group_from_top)


def _logits_table(sid: str, directions: Tensor, unembed: Tensor, k: int) -> dict:
    """Top ``k`` boosted and suppressed tokens of each unit's output direction through W_U."""
    rows: dict[str, list] = {"source_id": [], "unit": [], "sign": [], "rank": [], "token_id": [], "value": []}
    for chunk_start in range(0, directions.shape[0], 512):
        effects = directions[chunk_start : chunk_start + 512] @ unembed  # [chunk, d_vocab]
        for sign, (vals, ids) in (("+", effects.topk(k, dim=1)), ("-", (-effects).topk(k, dim=1))):
            vals = vals if sign == "+" else -vals
            n = vals.shape[0]
            rows["unit"].append(np.repeat(np.arange(chunk_start, chunk_start + n), k))
            rows["rank"].append(np.tile(np.arange(k), n))
            rows["token_id"].append(ids.reshape(-1).cpu().numpy())
            rows["value"].append(vals.reshape(-1).cpu().numpy())
            rows["sign"].append(np.full(n * k, sign, dtype=object))
    out = {key: np.concatenate(v) for key, v in rows.items() if v}
    out["source_id"] = [sid] * len(out["unit"])
    return {key: out[key] for key in ("source_id", "unit", "sign", "rank", "token_id", "value")}


def _write_links(writer: StoreWriter, tracked: list[_Tracked], k: int) -> None:
    """The bridge between a layer's neurons and the features of each SAE read from its ``hook_post``.

    Neuron -> features: each feature's share of the neuron's activation mass (``attributed_mass``,
    from the ``attribution_sums`` gathered in the pass),
    and two scores of the neuron: the effective number of features behind it and how many cover
    80% of its mass. Feature -> neurons: each neuron's share of the decoder row's squared norm.
    """
    neurons = {t.hook: t for t in tracked if t.source.kind == NEURON}
    saes = [t for t in tracked if t.decoder is not None and t.hook in neurons]
    per_hook = Counter(t.hook for t in saes)
    for sae in saes:
        layer = neurons[sae.hook].source.source_id
        decoder = sae.decoder.cpu().double().numpy()  # [d_sae, d_mlp]
        mass = feature_shares(mass_from_sums(sae.attribution, sae.decoder_up.double()).cpu().numpy())
        writer.append("links", _links_table(layer, sae.source.source_id, mass, decoder.T, k))
        energy = decoder**2 / np.maximum((decoder**2).sum(1, keepdims=True), 1e-30)
        writer.append("links", _links_table(sae.source.source_id, layer, energy, decoder, k))
        suffix = f"[{sae.source.source_id}]" if per_hook[sae.hook] > 1 else ""
        for metric, values in (
            ("sae_features", effective_number(mass)),
            ("sae_features_80", n_covering(mass)),
        ):
            writer.append(
                "scores",
                {
                    "source_id": [layer] * len(values),
                    "unit": np.arange(len(values), dtype=np.int32),
                    "metric": [metric + suffix] * len(values),
                    "value": values.astype(np.float64),
                },
            )


def _links_table(sid: str, target: str, share: np.ndarray, weight: np.ndarray, k: int) -> dict:
    """Each row's ``k`` largest ``share`` entries with a share above zero, largest first."""
    k = min(k, share.shape[1])
    top = np.argpartition(-share, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(share, top, 1), axis=1, kind="stable"), 1)
    units, ranks = np.nonzero(np.take_along_axis(share, top, 1) > 0)
    cols = top[units, ranks]
    return {
        "source_id": [sid] * len(units),
        "unit": units.astype(np.int32),
        "rank": ranks.astype(np.int32),
        "target_source_id": [target] * len(units),
        "target_unit": cols.astype(np.int32),
        "weight": weight[units, cols].astype(np.float32),
        "share": share[units, cols].astype(np.float32),
    }


def _neighbors_table(sid: str, directions: Tensor, k: int) -> dict:
    """Each unit's ``k`` nearest units of the same source by cosine similarity of ``directions``.

    Neurons: their output directions (rows of W_out); SAE features: their decoder rows.
    """
    unit_dirs = torch.nn.functional.normalize(directions.float(), dim=1)
    k = min(k, unit_dirs.shape[0] - 1)
    units, ranks, neighbors, cosines = [], [], [], []
    for chunk_start in range(0, unit_dirs.shape[0], 1024):
        sims = unit_dirs[chunk_start : chunk_start + 1024] @ unit_dirs.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + chunk_start] = -torch.inf  # not its own neighbor
        vals, ids = sims.topk(k, dim=1)
        n = vals.shape[0]
        units.append(np.repeat(np.arange(chunk_start, chunk_start + n), k))
        ranks.append(np.tile(np.arange(k), n))
        neighbors.append(ids.reshape(-1).cpu().numpy())
        cosines.append(vals.reshape(-1).cpu().numpy())
    units_np = np.concatenate(units)
    return {
        "source_id": [sid] * len(units_np),
        "unit": units_np.astype(np.int32),
        "rank": np.concatenate(ranks).astype(np.int32),
        "neighbor": np.concatenate(neighbors).astype(np.int32),
        "cosine": np.concatenate(cosines).astype(np.float32),
    }
