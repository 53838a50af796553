"""A whole circuit-lab run (``run_lab``), as the app's job, the CLI and notebooks start it: every input
checked first (nothing runs on bad input), then predictions, logit lens, attribution and attention
per prompt, every head and MLP layer and the neurons with the largest direct attribution ablated, activation patching, the minimal circuit and steering.

    >>> from neurodash.lab_run import LabSettings
    >>> run = run_lab("demo.duckdb", LabSettings(("A B A B A", "X Y X Y X")))  # doctest: +SKIP
    >>> run.circuit.components, run.figure("patching_heads").show()  # doctest: +SKIP

Mean ablation (and the minimal circuit, which ablates with the run's ablation and measures
faithfulness with means) replaces a component by its mean over the run's own prompts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from neurodash.errors import NeurodashError
from neurodash.lab import MEAN, LabPrompt
from neurodash.lab_run import SWEEP, LabRun, LabSettings, Steer, SteeringResult, parse_head
from neurodash.storage import Store
from neurodash.storage.owned import now
from neurodash.units import NEURON, Source, parse_ref
from precompute.live.cache import cached_model, cached_sae
from precompute.live.lab import Lab
from precompute.live.maximize import sae_spec

Progress = Callable[[int, int, str], None]  # (done, total, stage)
TOP_NEURONS = 10  # neurons ablated: those with the largest direct attribution to the metric
STAGES = ("prompts", "analysis", "ablation", "patching", "circuit", "steering")


@dataclass(frozen=True)
class _SteerTarget:
    """A unit to steer with, checked; a neuron's or feature's direction is read up front (a head's
    depends on the prompt)."""

    steer: Steer
    label: str
    source: Source | None  # None for a head
    unit: int
    layer: int
    hook: str = ""
    direction: np.ndarray | None = None
    read: tuple[str, int] | None = None  # what the sweep reads after steering


def lab_for(model_name: str, device: str = "cpu") -> Lab:
    """The lab on the process's cached model (loaded once per worker process)."""
    return Lab(cached_model(model_name, device))


def run_lab(
    store_path: str | os.PathLike | None,
    settings: LabSettings,
    progress: Progress | None = None,
    lab: Lab | None = None,
    device: str = "cpu",
) -> LabRun:
    """Run the lab on the store's model (or on ``lab``'s, which then needs no store unless a neuron or
    feature is steered). A ``NeurodashError`` for any bad input, before any intervention runs."""
    started = time.perf_counter()
    settings.check()
    report = progress or (lambda done, total, stage: None)
    sources: list[Source] = []
    if store_path is not None:
        with Store(store_path) as store:
            sources = store.sources()
            model_name = store.meta.get("model")
        if lab is None:
            if not model_name:
                raise NeurodashError(f"{store_path} does not say which model it was computed with")
            report(0, len(STAGES), "Loading the model…")
            lab = lab_for(model_name, device)
    if lab is None:
        raise NeurodashError("give a store or a lab")
    targets = [_target(lab, s, sources, store_path is not None, device) for s in settings.steer]
    prompts = [_prompt(lab, settings, i) for i in range(len(settings.prompts))]
    passes = lab.forward_passes

    report(1, len(STAGES), "Predictions, logit lens, attribution, attention…")
    analyses = tuple(lab.analyse(p) for p in prompts)
    report(2, len(STAGES), f"Ablating every head, MLP and the top neurons ({settings.ablation})…")
    means = lab.mean_activations(settings.prompts) if settings.ablation == MEAN else None
    neurons = lab.top_neurons(prompts, TOP_NEURONS)
    ablation = lab.ablate(prompts, settings.ablation, neurons=neurons, means=means)
    report(3, len(STAGES), "Activation patching…")
    patching = lab.patch(prompts)
    report(4, len(STAGES), "Searching a minimal circuit…")
    circuit = lab.minimal_circuit(prompts, settings.ablation, single=ablation, means=means)
    report(5, len(STAGES), "Steering…")
    steering = tuple(_steer(lab, prompts[0], t, settings.steer_tokens) for t in targets)
    report(len(STAGES), len(STAGES), "Done")
    return LabRun(
        settings=settings,
        model=lab.model.name,
        prompts=tuple(prompts),
        analyses=analyses,
        ablation=ablation,
        patching=patching,
        circuit=circuit,
        steering=steering,
        seconds=time.perf_counter() - started,
        forward_passes=lab.forward_passes - passes,
        created_at=now(),
    )


def _prompt(lab: Lab, settings: LabSettings, i: int) -> LabPrompt:
    try:
        return lab.prompt(
            settings.prompts[i],
            answer=settings.per_prompt("answers", i),
            counterfactual=settings.per_prompt("counterfactuals", i),
            corrupted=settings.per_prompt("corrupted", i),
            corruption=settings.corruption,
            seed=i,
        )
    except NeurodashError as e:
        raise NeurodashError(f"prompt {i + 1}: {e}" if len(settings.prompts) > 1 else str(e)) from None


def _target(lab: Lab, steer: Steer, sources: Sequence[Source], have_store: bool, device: str) -> _SteerTarget:
    """The unit ``steer`` names, checked against the model (heads) or the store (neurons, features)."""
    h = parse_head(steer.unit)
    if h is not None:
        if not (h.layer < lab.n_layers and h.index < lab.n_heads):
            raise NeurodashError(
                f"no head {steer.unit} in {lab.model.name} ({lab.n_layers} layers x {lab.n_heads} heads)"
            )
        return _SteerTarget(steer, str(h), None, h.index, h.layer)
    if not have_store:
        raise NeurodashError(f"steering with {steer.unit} needs the store that has it")
    ref = parse_ref(steer.unit, list(sources))
    source = next(s for s in sources if s.source_id == ref.source_id)
    if source.kind == NEURON:
        hook, direction = lab.neuron_direction(source.layer, ref.unit)
        read = (source.hook, ref.unit)
    else:  # a feature: its SAE's decoder row, added where the SAE reads
        sae = cached_sae(sae_spec(source), device)
        hook, direction, read = sae.hook, sae.sae.W_dec[ref.unit].detach().float().cpu().numpy(), None
    lab.model.check_hooks([hook])
    return _SteerTarget(steer, str(ref), source, ref.unit, source.layer, hook, direction, read)


def _steer(lab: Lab, prompt: LabPrompt, target: _SteerTarget, n_tokens: int) -> SteeringResult:
    if target.direction is None:  # a head: its output direction on this prompt
        hook, direction = lab.head_direction(prompt, target.layer, target.unit)
    else:
        hook, direction = target.hook, target.direction
    read = target.read
    coefficient = target.steer.coefficient
    scale = abs(coefficient) / 4 if coefficient else 1.0
    coefficients = sorted({float(c * scale) for c in SWEEP} | {coefficient})
    return SteeringResult(
        steer=target.steer,
        label=target.label,
        source_id=None if target.source is None else target.source.source_id,
        unit=target.unit,
        run=lab.steer(prompt, hook, np.asarray(direction), coefficient, n_tokens),
        sweep=lab.steering_sweep(prompt, hook, np.asarray(direction), coefficients, read),
    )
