"""The model steps (precompute/n2g.py) on stores of real architectures: the tiny Llama's store (neurons
and SAE features) and the embedded model's (marked ``model``). What they read equals a plain Hugging
Face forward of the same sequences (the MLP's input to ``down_proj`` is ``hook_post``), and the
evidence is consistent with the store; then ``neurodash explain`` with and without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from neurodash.explain import PATTERN, PATTERN_N2G, Evidence
from neurodash.explain_run import _unit_texts, explain_store
from neurodash.storage import Store
from neurodash.storage.explanations import Explanations, sequences
from neurodash.units import SAE_FEATURE, Source, UnitRef
from precompute.n2g import DROP, KEEP, Example, ModelReader, N2GExplainer, load_n2g, strongest_examples


def plain_hook_post(folder: Path, layer: int, ids: list[int]) -> torch.Tensor:
    """``blocks.L.mlp.hook_post`` of one sequence by a plain HF forward: the input of ``down_proj``."""
    model = _hf(folder)
    seen: list[torch.Tensor] = []
    mlp = model.model.layers[layer].mlp
    handle = mlp.down_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            model(torch.tensor([ids]))
    finally:
        handle.remove()
    return seen[0][0].float()


def plain_activation(folder: Path, source: Source, reader: ModelReader, ids: list, unit: int) -> float:
    """A unit's activation at the last of ``ids`` by a plain HF forward (features: the SAE encodes it)."""
    acts = plain_hook_post(folder, source.layer, ids)[-1:]
    if source.kind == SAE_FEATURE and reader.sae is not None:
        acts = reader.sae.encode(acts[None])[0]
    return float(acts[-1, unit])


_HF: dict[Path, AutoModelForCausalLM] = {}


def _hf(folder: Path):
    if folder not in _HF:
        _HF[folder] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return _HF[folder]


def check_evidence(store_path: Path, explainer: N2GExplainer, refs: list[UnitRef], folder: Path) -> int:
    """Run the steps on ``refs``; every activation they report equals a plain forward of its context
    (the store's full context, the truncated one, each replaced one). How many examples were checked."""
    with Store(store_path) as store:
        batch = list(_unit_texts(store, refs))
        explainer.prepare(store, batch)
        full = sequences(store, {w.seq_id for t in batch for w in t.shown})
        sources = {s.source_id: s for s in store.sources()}
    checked = 0
    for texts in batch:
        source = sources[texts.ref.source_id]
        reader = explainer.reader(source)
        examples = {(x.seq_id, x.pos): x for x in strongest_examples(texts, full, reader.bos)}
        for e in explainer.evidence(texts.ref):
            check_example(
                folder, source, reader, texts.ref.unit, texts.max_act, examples[(e.seq_id, e.pos)], e
            )
            checked += 1
    return checked


def check_example(
    folder: Path, source: Source, reader: ModelReader, unit: int, max_act: float, x: Example, e: Evidence
) -> None:
    def plain(before: tuple[int, ...]) -> float:
        return plain_activation(folder, source, reader, [reader.bos, *before, x.trigger], unit)

    tol = {"rel": 1e-3, "abs": 1e-3 * max_act}
    assert plain(x.before) == pytest.approx(e.activation, **tol)  # the store's
    assert e.context == x.before[len(x.before) - len(e.context) :]
    assert plain(e.context) == pytest.approx(e.kept * e.activation, **tol)
    assert e.kept >= KEEP or len(e.context) == len(x.before)
    truncated = e.kept * e.activation
    for d, act in enumerate(e.replaced, start=1):
        blanked = list(e.context)
        blanked[-d] = reader.neutral
        assert plain(tuple(blanked)) == pytest.approx(act, **tol)
        assert ((d, e.context[-d]) in e.important) == (truncated - act > DROP * truncated)


def strongest_units(store_path: Path, source_id: str, n: int) -> list[UnitRef]:
    with Store(store_path) as store:
        units = store.units_frame(source_id).sort_values("max_act", ascending=False)
    return [UnitRef(source_id, int(u)) for u in units["unit"][:n]]


def test_the_steps_read_what_a_plain_forward_reads_on_the_tiny_llama(tiny_store, tiny_model_dir):
    explainer = load_n2g(str(tiny_store))
    refs = strongest_units(tiny_store, "L1.mlp", 3) + strongest_units(tiny_store, _sae_source(tiny_store), 3)
    assert check_evidence(tiny_store, explainer, refs, tiny_model_dir) >= 12


@pytest.mark.model
def test_the_steps_on_the_embedded_model(probe_store, embedded_model_dir):
    explainer = load_n2g(str(probe_store))
    assert (
        check_evidence(probe_store, explainer, strongest_units(probe_store, "L0.mlp", 4), embedded_model_dir)
        >= 8
    )


def _sae_source(store_path: Path) -> str:
    with Store(store_path) as store:
        return next(s.source_id for s in store.sources() if s.kind == SAE_FEATURE)


def test_explain_store_with_the_steps_records_its_explainer(tiny_store, tmp_path):
    refs = strongest_units(tiny_store, "L1.mlp", 2)
    units = [f"{r.source_id}/{r.unit}" for r in refs]
    out = tmp_path / "x.explanations.duckdb"
    explain_store(tiny_store, units=units, explainer=load_n2g(str(tiny_store)), out=out)
    explain_store(tiny_store, units=units, out=out)
    file = Explanations(out)
    both = {(e.ref, e.explainer) for e in file.all()}
    assert both == {(r, x) for r in refs for x in (PATTERN, PATTERN_N2G)}
    assert all(e.details["n2g"] for e in file.all(PATTERN_N2G))
    assert all("n2g" not in e.details for e in file.all(PATTERN))
