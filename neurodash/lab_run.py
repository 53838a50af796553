"""One circuit-lab run as the app, the CLI, notebooks and the lab file see it: what was asked
(``LabSettings``, which round-trips through a URL query) and what came back (``LabRun``), as JSON and
CSV rows, torch-free. ``precompute.live.lab_run.run_lab`` computes a run; ``neurodash.lab_figures``
draws it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from neurodash.errors import NeurodashError
from neurodash.lab import (
    ABLATIONS,
    MEAN,
    AblationResult,
    AttentionPatterns,
    Circuit,
    Component,
    LabPrompt,
    LogitAttribution,
    LogitLens,
    PatchingResult,
    Prediction,
    PromptAnalysis,
    SteeringRun,
    SteeringSweep,
)

ONE_TOKEN, RANDOM = "one-token", "random"  # the default corruptions (as precompute.live.lab names them)
CORRUPTIONS = (ONE_TOKEN, RANDOM)
MAX_PROMPTS = 8
STEER_TOKENS = 10
SWEEP = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)  # coefficients of the steering sweep, times the one asked
_HEAD = re.compile(r"^L(\d+)H(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Steer:
    """A unit to steer with: ``unit`` as typed (``L15N631``, ``L15F7``, ``<source>/<index>`` or a head
    ``L8H1``) and its coefficient."""

    unit: str
    coefficient: float

    def __str__(self) -> str:
        return f"{self.unit}={self.coefficient:g}"


def parse_steer(text: str) -> Steer:
    """``L15N631=4.0`` (a coefficient that is not a finite number is refused, with one line)."""
    unit, sep, coef = text.partition("=")
    if not sep or not unit.strip():
        raise NeurodashError(f"cannot read steering {text!r}: use UNIT=COEFFICIENT, e.g. L15N631=4.0")
    try:
        value = float(coef)
    except ValueError:
        raise NeurodashError(
            f"the steering coefficient {coef.strip()!r} of {unit.strip()} is not a number"
        ) from None
    if not math.isfinite(value):
        raise NeurodashError(
            f"the steering coefficient of {unit.strip()} must be a finite number, not {coef!r}"
        )
    return Steer(unit.strip(), value)


def parse_head(text: str) -> Component | None:
    """The head ``L8H1`` names, or None when ``text`` names no head."""
    m = _HEAD.match(text.strip())
    return Component("head", int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class LabSettings:
    """What a run asks. ``answers``, ``counterfactuals`` and ``corrupted`` are per prompt ("" or a
    missing entry: the default, i.e. the model's top prediction, no counterfactual, ``corruption``)."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...] = ()
    counterfactuals: tuple[str, ...] = ()
    corrupted: tuple[str, ...] = ()
    corruption: str = ONE_TOKEN
    ablation: str = MEAN
    steer: tuple[Steer, ...] = ()
    steer_tokens: int = STEER_TOKENS

    def check(self) -> LabSettings:
        """Refuse, with one line, what no model run could fix (the model checks the rest)."""
        if not self.prompts:
            raise NeurodashError("give at least one prompt")
        if len(self.prompts) > MAX_PROMPTS:
            raise NeurodashError(f"at most {MAX_PROMPTS} prompts per run, not {len(self.prompts)}")
        for i, text in enumerate(self.prompts):
            if not text.strip():
                raise NeurodashError(f"prompt {i + 1} is empty")
        for name in ("answers", "counterfactuals", "corrupted"):
            if len(getattr(self, name)) > len(self.prompts):
                raise NeurodashError(f"{len(getattr(self, name))} {name} for {len(self.prompts)} prompts")
        if self.corruption not in CORRUPTIONS:
            raise NeurodashError(f"unknown corruption {self.corruption!r}: use {' or '.join(CORRUPTIONS)}")
        if self.ablation not in ABLATIONS:
            raise NeurodashError(f"unknown ablation {self.ablation!r}: use {', '.join(ABLATIONS)}")
        if not 1 <= self.steer_tokens <= 64:
            raise NeurodashError(f"generate 1 to 64 tokens when steering, not {self.steer_tokens}")
        return self

    def per_prompt(self, name: str, i: int) -> str | None:
        values = getattr(self, name)
        return values[i] if i < len(values) and values[i] != "" else None

    def to_query(self) -> dict[str, list[str]]:
        """The URL query of these settings (lists: one value per prompt or unit), defaults left out."""
        query: dict[str, list[str]] = {"prompt": list(self.prompts)}
        for key, name in (
            ("answer", "answers"),
            ("counterfactual", "counterfactuals"),
            ("corrupted", "corrupted"),
        ):
            values = list(getattr(self, name))
            while values and values[-1] == "":
                values.pop()
            if values:
                query[key] = values
        if self.corruption != ONE_TOKEN:
            query["corruption"] = [self.corruption]
        if self.ablation != MEAN:
            query["ablation"] = [self.ablation]
        if self.steer:
            query["steer"] = [str(s) for s in self.steer]
        if self.steer_tokens != STEER_TOKENS:
            query["tokens"] = [str(self.steer_tokens)]
        return query

    @classmethod
    def from_query(cls, query: Mapping[str, str | Sequence[str]]) -> LabSettings:
        """Settings from a URL query (each value one string or a list); a ``NeurodashError`` on bad values."""

        def values(key: str) -> tuple[str, ...]:
            v = query.get(key)
            return () if v is None else (v,) if isinstance(v, str) else tuple(v)

        tokens = values("tokens")
        try:
            steer_tokens = int(tokens[0]) if tokens else STEER_TOKENS
        except ValueError:
            raise NeurodashError(
                f"the number of tokens to generate {tokens[0]!r} is not a whole number"
            ) from None
        return cls(
            prompts=values("prompt"),
            answers=values("answer"),
            counterfactuals=values("counterfactual"),
            corrupted=values("corrupted"),
            corruption=(values("corruption") or (ONE_TOKEN,))[0],
            ablation=(values("ablation") or (MEAN,))[0],
            steer=tuple(parse_steer(s) for s in values("steer") if s.strip()),
            steer_tokens=steer_tokens,
        )


@dataclass(frozen=True)
class SteeringResult:
    """One unit steered: its name, the page it links to (``href``: None for a head, whose page may
    not exist), the generation side by side and the coefficient sweep."""

    steer: Steer
    label: str
    source_id: str | None  # the unit's source (None for a head)
    unit: int
    run: SteeringRun
    sweep: SteeringSweep


@dataclass(frozen=True)
class LabRun:
    """A whole run: settings, per-prompt analyses, the ablation, patching, circuit and steering."""

    settings: LabSettings
    model: str
    prompts: tuple[LabPrompt, ...]
    analyses: tuple[PromptAnalysis, ...]
    ablation: AblationResult
    patching: PatchingResult
    circuit: Circuit
    steering: tuple[SteeringResult, ...] = ()
    seconds: float = 0.0
    forward_passes: int = 0
    created_at: datetime | None = None
    run_id: int | None = field(default=None, compare=False)

    @property
    def gaps(self) -> np.ndarray:
        """Per prompt, clean - corrupted metric: what patching and the circuit divide by."""
        return self.patching.clean_metric - self.patching.corrupted_metric

    def small_gap_prompts(self) -> tuple[int, ...]:
        """Prompts whose gap is below ``lab.MIN_GAP``: their normalised scores are noise, and the
        averages weight them by their gap (``lab.gap_weighted_mean``)."""
        from neurodash.lab import MIN_GAP

        return tuple(int(i) for i in np.flatnonzero(np.abs(self.gaps) < MIN_GAP))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (NaN written as null)."""
        return _encode(dataclasses.replace(self, run_id=None)) | {"run_id": self.run_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabRun:
        run = _decode(dict(data))
        if not isinstance(run, LabRun):
            raise NeurodashError("not a lab run")
        return dataclasses.replace(run, run_id=data.get("run_id"))

    def csv_rows(self) -> list[dict[str, Any]]:
        """Every number as one long row: section, prompt (index), item (a component, token or
        position), layer, index, value, text."""
        return _csv_rows(self)

    def figure(self, name: str, prompt: int = 0, **options: Any):
        """One of ``lab_figures.FIGURES`` as a ``plotly.graph_objects.Figure`` (for notebooks)."""
        import plotly.graph_objects as go

        from neurodash import lab_figures

        return go.Figure(lab_figures.figure(self, name, prompt, **options))


CSV_COLUMNS = ("section", "prompt", "item", "layer", "index", "value", "text")


def _csv_rows(run: LabRun) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(section: str, prompt: int | None, item: str, layer=None, index=None, value=None, text=None):
        value = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        rows.append(dict(zip(CSV_COLUMNS, (section, prompt, item, layer, index, value, text))))

    for p, (prompt, analysis) in enumerate(zip(run.prompts, run.analyses)):
        add("prompt", p, "metric", value=float(analysis.attribution.metric), text=prompt.text)
        add(
            "corrupted",
            p,
            "metric",
            value=float(run.patching.corrupted_metric[p]),
            text="".join(prompt.corrupted_tokens[1:]),
        )
        for rank, pred in enumerate(analysis.predictions):
            add("prediction", p, pred.token, index=rank, value=pred.prob, text=pred.token)
        lens = analysis.lens
        for (layer, pos), v in np.ndenumerate(lens.answer_prob):
            add("lens_answer_prob", p, prompt.tokens[pos], layer, pos, float(v), lens.top_tokens[layer][pos])
        for (layer, h), v in np.ndenumerate(analysis.attribution.heads):
            add("dla", p, f"L{layer}H{h}", layer, h, float(v))
        for layer, v in enumerate(analysis.attribution.mlps):
            add("dla", p, f"L{layer}MLP", layer, None, float(v))
        for (layer, h), v in np.ndenumerate(run.ablation.heads[p]):
            add(f"ablation_{run.ablation.kind}", p, f"L{layer}H{h}", layer, h, float(v))
        for layer, v in enumerate(run.ablation.mlps[p]):
            add(f"ablation_{run.ablation.kind}", p, f"L{layer}MLP", layer, None, float(v))
        for n, v in zip(run.ablation.neurons, run.ablation.neuron_effects[p]):
            add(f"ablation_{run.ablation.kind}", p, str(n), n.layer, n.index, float(v))
        for (layer, h), v in np.ndenumerate(run.patching.heads[p]):
            add("patching", p, f"L{layer}H{h}", layer, h, float(v))
        for layer, v in enumerate(run.patching.mlps[p]):
            add("patching", p, f"L{layer}MLP", layer, None, float(v))
        for (layer, pos), v in np.ndenumerate(run.patching.resid[p]):
            add("patching_resid", p, prompt.tokens[pos], layer, pos, float(v))
    c = run.circuit
    for comp in c.components:
        add(
            "circuit",
            None,
            str(comp),
            comp.layer,
            comp.index,
            c.kept_when_ablated,
            f"faithfulness {c.faithfulness:.4f}",
        )
    for s in run.steering:
        add("steering", None, s.label, None, None, s.steer.coefficient, s.run.steered_text)
        for coef, prob in zip(s.sweep.coefficients, s.sweep.answer_prob):
            add("steering_sweep", None, s.label, None, None, float(prob), f"coefficient {coef:g}")
    return rows


# --- JSON: dataclasses by name, arrays with their dtype, tuples as lists -----------------------
_TYPES = {
    cls.__name__: cls
    for cls in (
        LabRun,
        LabSettings,
        Steer,
        SteeringResult,
        LabPrompt,
        PromptAnalysis,
        Prediction,
        LogitLens,
        LogitAttribution,
        AttentionPatterns,
        AblationResult,
        PatchingResult,
        Circuit,
        Component,
        SteeringRun,
        SteeringSweep,
    )
}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, np.ndarray):
        flat = value.ravel().tolist()
        if value.dtype.kind == "f":
            flat = [None if math.isnan(x) else x for x in flat]
        return {"array": flat, "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    if "array" in value:
        return np.array(value["array"], dtype=value["dtype"]).reshape(value["shape"])
    if "datetime" in value:
        return datetime.fromisoformat(value["datetime"])
    cls = _TYPES.get(value.get("type", ""))
    if cls is None:
        raise NeurodashError(f"not a lab run: unknown part {value.get('type')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _decode(v) for k, v in value.items() if k in names})
