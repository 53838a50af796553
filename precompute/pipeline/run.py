"""The precompute pipeline: corpus -> one streaming pass through the model -> a store.

>>> from precompute import PrecomputeConfig, run_precompute
>>> run_precompute(PrecomputeConfig(layers=(0, 15), tokens=8192, out="store.duckdb"))  # doctest: +SKIP

``run_precompute`` sets up what to track (each layer's neurons, each SAE's features), runs the pass
(``stream``), then writes each source's tables (``tables``) and the links between neurons and features.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.config import PrecomputeConfig
from neurodash.errors import NeurodashError
from neurodash.storage import StoreWriter, check_writable
from neurodash.units import NEURON, SAE_FEATURE, Source, neuron_source_id, sae_source_id
from precompute.corpus import corpus_documents
from precompute.models import LoadedModel, layer_of, load_model, mlp_hook, mlp_input_hook
from precompute.pipeline import tables
from precompute.pipeline.accumulate import UnitAccumulator
from precompute.pipeline.polysemanticity import effective_number, feature_shares, mass_from_sums, n_covering
from precompute.pipeline.stream import Contexts, NeuronBridge, Tracked, stream

__all__ = ["PrecomputeConfig", "run_precompute"]


def run_precompute(cfg: PrecomputeConfig, progress: bool = True) -> Path:
    """Stream the corpus through the model once and write a store to ``cfg.out``."""
    out = Path(cfg.out)
    check_writable(out, cfg.overwrite)
    dataset, sampling = corpus_documents(
        cfg.dataset, cfg.split, cfg.text_column, cfg.shuffle, cfg.sample_seed
    )
    model = load_model(cfg.model, cfg.device)
    layers = _check_layers(cfg.layers, model)
    first = 0 if cfg.keep_bos or model.bos_token_id is None else 1
    tracked = [neurons(model, layer, cfg) for layer in layers]
    tracked += features(model, cfg)
    neuron_hooks = {t.hook for t in tracked if t.source.kind == NEURON}
    for t in tracked:  # an SAE on tracked neurons: the bridge between them (``_write_links``)
        if t.decoder is not None and t.hook in neuron_hooks:
            up = t.decoder.to(cfg.device, torch.float32).clamp(min=0)
            sums = [torch.zeros(t.decoder.shape, dtype=torch.float64, device=cfg.device) for _ in range(2)]
            t.bridge = NeuronBridge(up, *sums)
    hooks = list(dict.fromkeys(t.hook for t in tracked))
    model.check_hooks(hooks)
    if cfg.scores:  # context clusters compare what each unit's layer reads at the example's token
        for t in tracked:
            t.context_hook = context_hook(model, t.hook)
        hooks = list(dict.fromkeys([*hooks, *(t.context_hook for t in tracked if t.context_hook)]))

    contexts = Contexts(cfg.context_dims, cfg.device, cfg.examples.seed) if cfg.scores else None
    with StoreWriter(out, overwrite=cfg.overwrite) as writer:
        n_tokens, phase_seconds = stream(
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
            config=json.dumps({**_config_dict(cfg), "sampling": sampling}),
        )
        return writer.commit()


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
    acc = UnitAccumulator(model.d_mlp, cfg.ctx, cfg.examples, cfg.device)
    return Tracked(source, source.hook, model.mlp_out_directions(layer), acc)


def features(model: LoadedModel, cfg: PrecomputeConfig) -> list[Tracked]:
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
    tokens = model.tokenizer.batch_decode([[i] for i in range(n)])
    return {"model": [model.name] * n, "token_id": np.arange(n, dtype=np.int32), "token": tokens}


def _write_source(
    writer: StoreWriter, t: Tracked, unembed: Tensor, cfg: PrecomputeConfig, contexts: Contexts | None
) -> None:
    writer.add_source(t.source)
    res = t.acc.result()
    sid = t.source.source_id
    writer.append("units", tables.units_table(sid, res, cfg.examples.hist_bins))
    writer.append("examples", tables.examples_table(sid, res, cfg.examples))
    writer.append("scores", tables.frequency_scores(sid, res))
    if contexts is not None:
        rep_mean = contexts.mean(t.context_hook)
        scores, clusters = tables.polysemanticity_tables(sid, res, rep_mean, cfg.context_dims)
        writer.append("scores", scores)
        writer.append("clusters", clusters)
    directions = t.directions.to(cfg.device)
    similar = directions if t.decoder is None else t.decoder.to(cfg.device)  # features: decoder cosine
    writer.append("logits", tables.logits_table(sid, directions, unembed, cfg.n_logits))
    writer.append("neighbors", tables.neighbors_table(sid, similar, cfg.n_neighbors))


def _write_links(writer: StoreWriter, tracked: list[Tracked], k: int) -> None:
    """The bridge between a layer's neurons and the features of each SAE read from its ``hook_post``.

    Neuron -> features: each feature's share of the neuron's activation mass (``attributed_mass``,
    from the ``attribution_sums`` gathered in the pass),
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
        mass = feature_shares(mass_from_sums(bridge.attribution, up).cpu().numpy())
        strong = feature_shares(mass_from_sums(bridge.strong, up).cpu().numpy())
        writer.append("links", tables.links_table(layer, sid, mass, decoder.T, k))
        energy = decoder**2 / np.maximum((decoder**2).sum(1, keepdims=True), 1e-30)
        writer.append("links", tables.links_table(sid, layer, energy, decoder, k))
        suffix = f"[{sid}]" if per_hook[sae.hook] > 1 else ""
        for metric, values in (
            ("sae_features", effective_number(mass)),
            ("sae_features_80", n_covering(mass)),
            ("sae_features_strong", effective_number(strong)),
        ):
            writer.append("scores", tables.unit_scores_table(layer, metric + suffix, values))
