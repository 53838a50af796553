"""The precompute pipeline: corpus -> one streaming pass through the model -> a store.

>>> from precompute import PrecomputeConfig, run_precompute
>>> run_precompute(PrecomputeConfig(layers=(0, 15), tokens=8192, out="store.duckdb"))  # doctest: +SKIP

``run_precompute`` sets up what to track (each layer's neurons and attention heads, each SAE's
features), runs the pass (``stream``), then writes each source's tables (``tables``), the links between
neurons and features, and the heads' scores on synthetic probes (``precompute.heads``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.config import PrecomputeConfig
from neurodash.errors import NeurodashError
from neurodash.storage import StoreWriter, check_writable
from neurodash.units import HEAD, NEURON, SAE_FEATURE, Source, head_source_id, neuron_source_id, sae_source_id
from precompute.corpus import Batch, corpus_documents, pack_windows
from precompute.device import check_device, format_bytes, memory_available
from precompute.models import LoadedModel, layer_of, load_model, mlp_hook, mlp_input_hook
from precompute.pipeline import fused, tables, weights_cache
from precompute.pipeline.accumulate import AccumulatorResult, UnitAccumulator, state_bytes
from precompute.pipeline.attention import ACTIVATION, AttentionStats, pattern_hook, z_hook, z_norm
from precompute.pipeline.polysemanticity import (
    cluster_bytes,
    effective_number,
    feature_shares,
    mass_from_sums,
    n_covering,
)
from precompute.pipeline.shard import WHOLE, shard_batches
from precompute.pipeline.stream import Contexts, NeuronBridge, PhaseClock, Tracked, stream

if TYPE_CHECKING:  # imported where SAEs load (importing SAELens takes seconds) or heads are written
    from precompute.heads import BridgeAttention
    from precompute.sae import LoadedSAE

__all__ = ["PrecomputeConfig", "run_precompute"]


def run_precompute(cfg: PrecomputeConfig, progress: bool = True) -> Path:
    """Stream the corpus through the model once and write a store to ``cfg.out``."""
    out = Path(cfg.out)
    check_writable(out, cfg.overwrite)
    check_device(cfg.device)
    load_started = time.perf_counter()
    run = prepare(cfg)
    load_seconds = time.perf_counter() - load_started
    with frozen_heap(), StoreWriter(out, overwrite=cfg.overwrite) as writer:
        batches = shard_batches(run.batches(), WHOLE, cfg.block_batches, on_block_end=lambda _: run.flush())
        n_tokens, phase_seconds = stream(
            run.model,
            run.dataset,
            cfg,
            run.tracked,
            run.hooks,
            run.first,
            writer,
            progress,
            run.contexts,
            batches,
        )
        writer.flush(wait=False)  # the pass's sequences go in while the tables are computed
        phase_seconds["load"] = load_seconds
        write_store(writer, run, cfg, n_tokens, phase_seconds, progress)
        return writer.commit()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects that exist now (a loaded model's ~500k) out of the garbage collector's full
    passes until the block ends: each pass over them took ~0.25 s, a few times a run. (Inside
    another such block, the outer one lets go.)"""
    outermost = gc.get_freeze_count() == 0
    gc.collect()  # what is garbage now (loading's leftovers) would be kept for good
    gc.freeze()
    try:
        yield
    finally:
        if outermost:
            gc.unfreeze()


@dataclass
class PreparedPass:
    """What a pass tracks and reads, set up before it starts: the model, the sources to track
    (``tracked``), the hooks to cache, the corpus (``dataset``, None where only a merge is written)."""

    model: LoadedModel
    layers: tuple[int, ...]
    tracked: list[Tracked]
    hooks: list[str]
    first: int
    contexts: Contexts | None
    dataset: Iterable | None
    sampling: dict[str, object]
    cfg: PrecomputeConfig

    def batches(self) -> Iterator[Batch]:
        cfg = self.cfg
        return pack_windows(
            self.dataset,
            self.model.tokenizer,
            cfg.ctx,
            cfg.batch_size,
            cfg.text_column,
            cfg.tokens,
            cfg.skip_tokens,
        )

    def flush(self) -> None:
        """End a block of batches: every float64 block sum joins its exact total."""
        for t in self.tracked:
            t.acc.flush()
            if t.attention is not None:
                t.attention.flush()
            if t.bridge is not None:
                t.bridge.attribution.flush()
                t.bridge.strong.flush()
        if self.contexts is not None:
            self.contexts.flush()


def prepare(cfg: PrecomputeConfig, corpus: bool = True) -> PreparedPass:
    """Load the corpus (unless ``corpus`` is False), the model and SAEs; set up every source to track."""
    fused.use_threads(torch.get_num_threads())
    dataset, sampling = (
        corpus_documents(cfg.dataset, cfg.split, cfg.text_column, cfg.shuffle, cfg.sample_seed)
        if corpus
        else (None, {})
    )
    model = load_model(cfg.model, cfg.device, cfg.dtype)
    model.check_ctx(cfg.ctx)
    layers = _check_layers(cfg.layers, model)
    saes = load_saes(cfg)
    _check_memory([model.d_mlp] * len(layers) + [sae.d_sae for sae in saes], cfg)
    first = 0 if cfg.keep_bos or model.bos_token_id is None else 1
    tracked = [neurons(model, layer, cfg) for layer in layers]
    if cfg.heads:
        tracked += [heads(model, layer, cfg) for layer in layers]
    tracked += features(model, cfg, saes)
    neuron_hooks = {t.hook for t in tracked if t.source.kind == NEURON}
    for t in tracked:  # an SAE on tracked neurons: the bridge between them (``_write_links``)
        if t.decoder is not None and t.hook in neuron_hooks:
            t.bridge = NeuronBridge.on(t.decoder.to(cfg.device, torch.float32).clamp(min=0))
    hooks = list(dict.fromkeys(h for t in tracked for h in (t.hook, t.pattern_hook) if h))
    model.check_hooks(hooks)
    if cfg.scores:  # context clusters compare what each unit's layer reads at the example's token
        for t in tracked:
            if t.source.kind != HEAD:
                t.context_hook = context_hook(model, t.hook)
        hooks = list(dict.fromkeys([*hooks, *(t.context_hook for t in tracked if t.context_hook)]))
    contexts = Contexts(cfg.context_dims, cfg.device, cfg.examples.seed) if cfg.scores else None
    return PreparedPass(model, layers, tracked, hooks, first, contexts, dataset, sampling, cfg)


def write_store(
    writer: StoreWriter,
    run: PreparedPass,
    cfg: PrecomputeConfig,
    n_tokens: int,
    phase_seconds: dict[str, float],
    progress: bool = False,
) -> None:
    """After the pass (its sequences already appended): every source's tables, links, probe scores, meta.

    Adds to ``phase_seconds``: ``tables`` (all of this), and within it ``logit effects`` (units'
    directions through W_U), ``probe scores`` and ``insert`` (the store's inserts)."""
    model = run.model
    tables_started, inserted_before = time.perf_counter(), writer.insert_seconds
    clock = PhaseClock(cfg.device)
    writer.append("vocab", _vocab(model))
    unembed = Unembedding(model.unembed().to(cfg.device), _weights_key(model, cfg.device))
    attention = _bridge_attention(model) if any(t.attention is not None for t in run.tracked) else None
    for t in tqdm(in_source_id_order(run.tracked), desc="writing", unit="source", disable=not progress):
        t.source = dataclasses.replace(t.source, n_tokens=n_tokens)
        _write_source(writer, t, unembed, cfg, run.contexts, clock, attention)
    _write_links(writer, run.tracked, cfg.n_neighbors)
    if cfg.heads:
        with clock.phase("probe scores"):
            _write_probe_scores(
                writer, attention or _bridge_attention(model), run.layers, unembed.weights_key
            )
    writer.flush()
    phase_seconds["tables"] = time.perf_counter() - tables_started  # computed and inserted
    phase_seconds |= clock.seconds
    phase_seconds["insert"] = writer.insert_seconds - inserted_before  # beside the computing, on a thread
    write_meta(writer, cfg, run.sampling, n_tokens, phase_seconds)


def write_meta(
    writer: StoreWriter,
    cfg: PrecomputeConfig,
    sampling: dict[str, object],
    n_tokens: int,
    phase_seconds: dict[str, float],
    **config: object,
) -> None:
    """The store's meta: the run's model, corpus, settings (``cfg``, the corpus's ``sampling``, then
    ``config``), the tokens read and the seconds of each phase."""
    writer.set_meta(
        model=cfg.model,
        dataset=cfg.dataset,
        ctx=cfg.ctx,
        n_tokens=n_tokens,
        phase_seconds=json.dumps({k: round(v, 3) for k, v in phase_seconds.items()}),
        config=json.dumps({**_config_dict(cfg), "sampling": sampling, **config}),
    )


def in_source_id_order(tracked: list[Tracked]) -> list[Tracked]:
    """The sources in the order of their ``source_id`` strings (``L0.attn``, ``L0.mlp``, ``L1.mlp``,
    ``L10.mlp``, ..., ``L2.mlp``), the order their rows are written in. DuckDB skips a row group of a
    table by the min and max of its ``source_id`` (strings: ``L1 < L12 < L2``); in that order each
    group spans a few neighbouring sources, so a unit's lookup reads one or two groups. In layer order
    a group that holds ``L9`` and ``L10`` spans ``L10``..``L9``: nearly every source."""
    return sorted(tracked, key=lambda t: t.source.source_id)


def context_hook(model: LoadedModel, hook: str) -> str:
    """The MLP input of the hook's layer where the model has that hook, else the hook itself."""
    wanted = mlp_input_hook(layer_of(hook))
    return wanted if model.has_hook(wanted) else hook


def _check_layers(layers: tuple[int, ...] | None, model: LoadedModel) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise NeurodashError(
            f"layer {bad[0]} is out of range: {model.name} has layers 0-{model.n_layers - 1}"
        )
    return layers


def neurons(model: LoadedModel, layer: int, cfg: PrecomputeConfig) -> Tracked:
    """One layer's MLP neurons, to track."""
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
    acc = UnitAccumulator(model.d_mlp, cfg.ctx, cfg.examples, cfg.device, name=source.source_id)
    return Tracked(source, source.hook, model.mlp_out_directions(layer), acc)


def _check_memory(units_per_source: list[int], cfg: PrecomputeConfig) -> None:
    """Refuse, before the pass, a run whose units' state would not fit on its device, or whose
    context clusters (scores, computed on the CPU one source at a time) would not fit in memory."""
    ex, n_units = cfg.examples, sum(units_per_source)
    needs = [(cfg.device, state_bytes(n_units, cfg.ctx, ex, cfg.context_dims if cfg.scores else None))]
    if cfg.scores:
        needs.append(("cpu", cluster_bytes(max(units_per_source, default=0), ex.top_k + ex.sample_size)))
    for device, needed in needs:
        available = memory_available(device)
        if available is not None and needed > available:
            raise NeurodashError(
                f"--top-k {ex.top_k} and --bottom-k {ex.bottom_k} over {n_units:,} units would need about "
                f"{format_bytes(needed)} on {device}, which has {format_bytes(available)} free: keep fewer "
                "examples per unit, or track fewer layers"
            )


def heads(model: LoadedModel, layer: int, cfg: PrecomputeConfig) -> Tracked:
    """One layer's attention heads (query heads), to track: activation ``||z_h||`` read from
    ``hook_z``, attention rows from ``hook_pattern``."""
    hooks = (z_hook(layer), pattern_hook(layer))
    missing = [h for h in hooks if not model.has_hook(h)]
    if missing:
        raise NeurodashError(
            f"model {model.name} exposes no attention hook {missing[0]!r} through TransformerBridge: "
            "pass --no-heads to leave heads out"
        )
    n_heads = int(model.bridge.cfg.n_heads)
    source = Source(
        source_id=head_source_id(layer),
        model=cfg.model,
        hook=z_hook(layer),
        kind=HEAD,
        layer=layer,
        n_units=n_heads,
        n_tokens=0,
        config={**_config_dict(cfg), "activation": ACTIVATION},
    )
    acc = UnitAccumulator(n_heads, cfg.ctx, cfg.examples, cfg.device, name=source.source_id)
    no_directions = torch.zeros((n_heads, 0))  # a head writes a subspace: see ``_write_heads``
    return Tracked(
        source,
        source.hook,
        no_directions,
        acc,
        encode=z_norm,
        pattern_hook=pattern_hook(layer),
        attention=AttentionStats(n_heads, cfg.device),
    )


def load_saes(cfg: PrecomputeConfig) -> list[LoadedSAE]:
    from precompute.sae import load_sae

    return [load_sae(spec, cfg.device) for spec in cfg.saes]


def features(model: LoadedModel, cfg: PrecomputeConfig, saes: list[LoadedSAE] | None = None) -> list[Tracked]:
    """One source per SAE (``cfg.saes``, or those loaded from it): its features, read from its hook
    in the same pass as the neurons."""
    saes = load_saes(cfg) if saes is None else saes
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
        acc = UnitAccumulator(sae.d_sae, cfg.ctx, cfg.examples, cfg.device, name=source.source_id)
        directions = sae.residual_directions(model)
        tracked.append(Tracked(source, sae.hook, directions, acc, sae.encode, sae.decoder_directions()))
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


def _vocab(model: LoadedModel) -> tables.Columns:
    n = len(model.tokenizer)
    tokens = model.token_strings(range(n))
    return {"model": [model.name] * n, "token_id": np.arange(n, dtype=np.int32), "token": tokens}


@dataclass(frozen=True)
class Unembedding:
    """W_U as ``LoadedModel.unembed`` gives it, on the run's device, and the fingerprint of the model
    it comes from (``weights_cache``; empty when the cache is off)."""

    matrix: Tensor
    weights_key: str


def _weights_key(model: LoadedModel, device: str) -> str:
    if weights_cache.folder() is None:
        return ""
    return weights_cache.fingerprint(
        weights_cache.module_fingerprint(model.bridge, device),
        LoadedModel.unembed,
        LoadedModel.embedding_matrix,
        LoadedModel.activations,
    )


def _logit_effects(directions: Tensor, unembed: Unembedding, k: int) -> dict[str, np.ndarray]:
    """``tables.logit_arrays``, read from the weights cache where an earlier run computed them."""
    key = weights_cache.fingerprint(
        "logits",
        unembed.weights_key,
        directions,
        k,
        tables.screens(unembed.matrix),  # screened in bfloat16: values from float64 products
        tables,  # the code that computes them: every function it calls, in these two modules
        fused,
    )
    return weights_cache.cached_arrays(key, lambda: tables.logit_arrays(directions, unembed.matrix, k))


def _neighbors(directions: Tensor, k: int) -> dict[str, np.ndarray]:
    """``tables.neighbor_arrays``, read from the weights cache where an earlier run computed them."""
    device = weights_cache.device_kind(directions.device)
    key = weights_cache.fingerprint("neighbors", device, directions, k, tables.neighbor_arrays)
    return weights_cache.cached_arrays(key, lambda: tables.neighbor_arrays(directions, k))


def _ov_logit_effects(
    attention: BridgeAttention, layer: int, unembed: Unembedding, k: int
) -> dict[str, np.ndarray]:
    """A layer's heads' OV logit effects (``BridgeAttention.ov_logit_diagonal``), cached likewise."""
    from precompute import heads

    key = weights_cache.fingerprint("ov", unembed.weights_key, layer, k, heads, tables, fused)
    return weights_cache.cached_arrays(
        key, lambda: tables.effect_arrays([attention.ov_logit_diagonal(layer, unembed.matrix)], k)
    )


def _bridge_attention(model: LoadedModel) -> BridgeAttention:
    """One ``BridgeAttention`` for every layer's heads and the probes: it stacks W_V and W_O (every
    layer at once) and scales W_U once, not once per layer."""
    from precompute.heads import BridgeAttention  # imports TransformerLens: only where heads are written

    return BridgeAttention(model)


def _write_source(
    writer: StoreWriter,
    t: Tracked,
    unembed: Unembedding,
    cfg: PrecomputeConfig,
    contexts: Contexts | None,
    clock: PhaseClock,
    attention: BridgeAttention | None = None,
) -> None:
    writer.add_source(t.source)
    res = t.acc.result()
    sid = t.source.source_id
    writer.append("units", tables.units_table(sid, res, cfg.examples.hist_bins))
    writer.append("examples", tables.examples_table(sid, res, cfg.examples))
    writer.append("scores", tables.frequency_scores(sid, res))
    if t.attention is not None:
        if attention is None:
            raise RuntimeError("a head source written without its model's BridgeAttention")
        _write_heads(writer, attention, t, res, unembed, cfg, clock)
        return
    if contexts is not None:
        rep_mean = contexts.mean(t.context_hook)
        scores, clusters = tables.polysemanticity_tables(sid, res, rep_mean, cfg.context_dims)
        writer.append("scores", scores)
        writer.append("clusters", clusters)
    directions = t.directions.to(cfg.device)
    similar = directions if t.decoder is None else t.decoder.to(cfg.device)  # features: decoder cosine
    logits = clock.measure("logit effects", _logit_effects, directions, unembed, cfg.n_logits)
    writer.append("logits", tables.effects_columns(sid, logits))
    writer.append("neighbors", tables.neighbors_columns(sid, _neighbors(similar, cfg.n_neighbors)))


def _write_heads(
    writer: StoreWriter,
    attention: BridgeAttention,
    t: Tracked,
    res: AccumulatorResult,
    unembed: Unembedding,
    cfg: PrecomputeConfig,
    clock: PhaseClock,
) -> None:
    """A layer's heads: their examples' attention rows, corpus attention statistics, OV logit effects."""
    if t.attention is None:
        return
    sid = t.source.source_id
    writer.append("attention", tables.attention_table(sid, res, cfg.examples))
    for metric, values in t.attention.result().items():
        writer.append("scores", tables.unit_scores_table(sid, metric, values))
    logits = clock.measure(
        "logit effects", _ov_logit_effects, attention, t.source.layer, unembed, cfg.n_logits
    )
    writer.append("logits", tables.effects_columns(sid, logits))


def _write_probe_scores(
    writer: StoreWriter, attention: BridgeAttention, layers: tuple[int, ...], weights_key: str
) -> None:
    """The heads' scores on synthetic probes (a few forward passes, ``precompute.heads``; read from
    the weights cache where an earlier run computed them)."""
    if attention.loaded.bos_token_id is None:  # the probes start with BOS; the corpus statistics are kept
        return
    from precompute import heads

    key = weights_cache.fingerprint("probes", weights_key, layers, repr(heads.ProbeConfig()), heads)
    scores = weights_cache.cached_arrays(key, lambda: heads.score_heads(attention, layers=layers).scores)
    for i, layer in enumerate(layers):
        for metric, values in scores.items():
            writer.append("scores", tables.unit_scores_table(head_source_id(layer), metric, values[i]))


def _write_links(writer: StoreWriter, tracked: list[Tracked], k: int) -> None:
    """The bridge between a layer's neurons and the features of each SAE read from its ``hook_post``.

    Neuron -> features: each feature's share of the neuron's activation mass (``attributed_mass``,
    from the ``attribution_sums`` gathered in the pass), and in ``links_strong`` its share of the
    strong firing (the ``strong`` sums),
    and scores of the neuron: the effective number of features behind it, how many cover 80% of its
    mass, and the effective number behind its strong firing (``strong`` sums: tokens weighted by
    the neuron's activation). Feature -> neurons: each neuron's share of the decoder row's squared norm.
    """
    layer_of_hook = {t.hook: t.source.source_id for t in tracked if t.source.kind == NEURON}
    saes = [(t, t.bridge, t.decoder) for t in tracked if t.bridge is not None and t.decoder is not None]
    per_hook = Counter(t.hook for t, _, _ in saes)
    for sae, bridge, decoder_rows in saes:
        layer, sid = layer_of_hook[sae.hook], sae.source.source_id
        decoder = decoder_rows.cpu().double().numpy()  # [d_sae, d_mlp]
        up = bridge.decoder_up.double()
        mass = feature_shares(mass_from_sums(bridge.attribution.value(), up).cpu().numpy())
        strong = feature_shares(mass_from_sums(bridge.strong.value(), up).cpu().numpy())
        writer.append("links", tables.links_table(layer, sid, mass, decoder.T, k))
        writer.append("links_strong", tables.links_table(layer, sid, strong, decoder.T, k))
        energy = decoder**2 / np.maximum((decoder**2).sum(1, keepdims=True), 1e-30)
        writer.append("links", tables.links_table(sid, layer, energy, decoder, k))
        suffix = f"[{sid}]" if per_hook[sae.hook] > 1 else ""
        for metric, values in (
            ("sae_features", effective_number(mass)),
            ("sae_features_80", n_covering(mass)),
            ("sae_features_strong", effective_number(strong)),
        ):
            writer.append("scores", tables.unit_scores_table(layer, metric + suffix, values))
