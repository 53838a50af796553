"""What the circuit lab returns: plain values (numpy arrays, tuples) with no torch in them, for the app,
the CLI and the storage package. The engine that computes them is ``precompute/live/lab.py``.

Conventions shared by every result:
- positions count the BOS token (position 0), as the model sees the prompt;
- the *metric* of a prompt is the answer's logit at the last position, or, when a counterfactual answer
  is given, the logit difference answer - counterfactual;
- arrays with a leading prompt axis hold one row per prompt, in the order the prompts were given;
- a head is named ``L{layer}H{head}``, an MLP layer ``L{layer}MLP``, a neuron ``L{layer}N{index}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZERO, MEAN, RESAMPLE = "zero", "mean", "resample"
ABLATIONS = (ZERO, MEAN, RESAMPLE)
DENOISE, NOISE = "clean->corrupted", "corrupted->clean"  # patching: the source run -> the run patched
# A prompt whose clean and corrupted metrics differ by less than this (logits) is flagged: its
# normalised scores divide by a tiny gap and run far outside [0, 1] (the course's digits prompt had
# a gap of 0.17 and scores up to 6.4).
MIN_GAP = 1.0


@dataclass(frozen=True, order=True)
class Component:
    """A head, an MLP layer or one MLP neuron: what the lab ablates, patches and ranks."""

    kind: str  # "head", "mlp", "neuron" or "embed" (the token embedding: patching only)
    layer: int
    index: int = 0  # the head or the neuron; 0 for an MLP layer

    def __str__(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.index}"
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}"
        if self.kind == "embed":
            return "embed"
        return f"L{self.layer}MLP"


def head(layer: int, index: int) -> Component:
    return Component("head", layer, index)


def mlp(layer: int) -> Component:
    return Component("mlp", layer)


def neuron(layer: int, index: int) -> Component:
    return Component("neuron", layer, index)


EMBED = Component("embed", 0)


@dataclass(frozen=True)
class MeanActivations:
    """What mean ablation replaces a component with: its mean over every non-BOS position of a
    reference set of prompts (a corpus mean, where the caller has one, fits the same fields)."""

    z: np.ndarray  # [layer, head, d_head] (blocks.L.attn.hook_z)
    mlp_out: np.ndarray  # [layer, d_model] (blocks.L.hook_mlp_out)
    mlp_post: np.ndarray  # [layer, d_mlp] (blocks.L.mlp.hook_post)
    n_tokens: int


@dataclass(frozen=True)
class LabPrompt:
    """One clean prompt, its answer (and counterfactual), and its corrupted twin of the same length."""

    text: str
    token_ids: tuple[int, ...]  # BOS first
    tokens: tuple[str, ...]  # each id decoded on its own
    answer_id: int
    answer: str
    corrupted_ids: tuple[int, ...]
    corrupted_tokens: tuple[str, ...]
    counterfactual_id: int | None = None
    counterfactual: str | None = None

    @property
    def metric_name(self) -> str:
        if self.counterfactual is None:
            return f"logit({self.answer!r})"
        return f"logit({self.answer!r}) - logit({self.counterfactual!r})"


@dataclass(frozen=True)
class Prediction:
    token_id: int
    token: str
    prob: float


@dataclass(frozen=True)
class LogitLens:
    """The residual stream after every layer (``blocks.L.hook_resid_post``) through the final norm
    (its own RMS at that layer) and the unembedding. Arrays are ``[layer, position]``."""

    answer_prob: np.ndarray
    answer_rank: np.ndarray  # 0 = the top token
    top_token_ids: np.ndarray
    top_tokens: tuple[tuple[str, ...], ...]
    top_prob: np.ndarray


@dataclass(frozen=True)
class LogitAttribution:
    """Direct logit attribution at the last position: each term's contribution to the metric through
    the unembedding, with the final norm's per-token scale (1/RMS) frozen from the clean run, so the
    terms are linear and sum to the metric exactly (up to float error)."""

    heads: np.ndarray  # [layer, head]: head output (hook_z @ W_O) . direction * scale
    mlps: np.ndarray  # [layer]
    embed: float  # the token embedding (blocks.0.hook_resid_pre)
    bias: float  # attention and MLP output biases and the unembedding bias (0 for Llama models)
    metric: float  # the metric from the model's own logits
    frozen_scale: float  # the final norm's 1/RMS at the last position in the clean run

    @property
    def total(self) -> float:
        return float(self.heads.sum() + self.mlps.sum() + self.embed + self.bias)


@dataclass(frozen=True)
class AttentionPatterns:
    """Every head's pattern on one prompt: ``[layer, head, query, key]``."""

    tokens: tuple[str, ...]
    patterns: np.ndarray

    def last_token_to(self, back: int) -> np.ndarray:
        """``[layer, head]``: how much the last token attends to the position ``back`` steps before it."""
        return self.patterns[:, :, -1, -1 - back]

    def ranked(self, back: int, top: int = 10) -> tuple[tuple[Component, float], ...]:
        return _ranked_heads(self.last_token_to(back), top)


@dataclass(frozen=True)
class PromptAnalysis:
    """Everything the lab reads from one clean run."""

    prompt: LabPrompt
    predictions: tuple[Prediction, ...]
    lens: LogitLens
    attribution: LogitAttribution
    attention: AttentionPatterns


@dataclass(frozen=True)
class AblationResult:
    """The change in the metric (ablated - clean) when one component is ablated; negative = it helped."""

    kind: str  # ZERO, MEAN or RESAMPLE
    clean_metric: np.ndarray  # [prompt]
    heads: np.ndarray  # [prompt, layer, head]
    mlps: np.ndarray  # [prompt, layer]
    neurons: tuple[Component, ...]
    neuron_effects: np.ndarray  # [prompt, neuron]

    def ranked(self, top: int = 20) -> tuple[tuple[Component, float], ...]:
        """Components by the mean change over prompts, most harmful ablation first (those not run left out)."""
        items = [(head(layer, h), float(v)) for (layer, h), v in np.ndenumerate(self.heads.mean(0))]
        items += [(mlp(layer), float(v)) for layer, v in enumerate(self.mlps.mean(0))]
        items += list(zip(self.neurons, (float(v) for v in self.neuron_effects.mean(0))))
        return tuple(sorted((i for i in items if not np.isnan(i[1])), key=lambda item: item[1])[:top])


@dataclass(frozen=True)
class PatchingResult:
    """Activation patching, normalised per prompt: (patched - corrupted) / (clean - corrupted), so
    0 is the corrupted run and 1 the clean one, whichever run is patched (``direction``)."""

    direction: str  # DENOISE: clean activations into the corrupted run; NOISE: the reverse
    clean_metric: np.ndarray  # [prompt]
    corrupted_metric: np.ndarray  # [prompt]
    resid: tuple[np.ndarray, ...]  # per prompt [layer, position] (blocks.L.hook_resid_pre)
    heads: np.ndarray  # [prompt, layer, head] (hook_z of the head, every position)
    mlps: np.ndarray  # [prompt, layer] (hook_mlp_out, every position)

    @property
    def gaps(self) -> np.ndarray:
        """Per prompt, clean - corrupted metric: what each prompt's scores are divided by."""
        return self.clean_metric - self.corrupted_metric

    def mean_heads(self) -> np.ndarray:
        """``[layer, head]``: the scores averaged over prompts, weighted by their gap (``gap_weighted_mean``)."""
        return gap_weighted_mean(self.heads, self.gaps)

    def mean_mlps(self) -> np.ndarray:
        return gap_weighted_mean(self.mlps, self.gaps)

    def ranked_heads(self, top: int = 10) -> tuple[tuple[Component, float], ...]:
        return _ranked_heads(self.mean_heads(), top)


@dataclass(frozen=True)
class Circuit:
    """A small set of heads and MLP layers found greedily, meant to be both necessary and sufficient.

    ``kept_when_ablated``: the behaviour left when the set is ablated, normalised as patching is
    (0 = corrupted run, 1 = clean run), averaged over prompts; necessary: <= 1 - threshold.
    ``faithfulness``: (metric with everything but the set mean-ablated - metric with every head and
    MLP mean-ablated) / (clean metric - the latter), averaged over prompts; sufficient: >= threshold."""

    components: tuple[Component, ...]
    ablation: str
    threshold: float
    kept_when_ablated: float
    faithfulness: float
    found: bool  # False when no set within the search's size limit removed enough

    @property
    def sufficient(self) -> bool:
        """Whether the set alone, everything else mean-ablated, recovers >= threshold."""
        return bool(self.faithfulness >= self.threshold)


@dataclass(frozen=True)
class SteeringRun:
    """Greedy generation with ``coefficient`` x direction added at ``hook`` (every position), beside
    the model's own generation."""

    hook: str
    coefficient: float
    steered_ids: tuple[int, ...]
    steered_text: str
    unsteered_ids: tuple[int, ...]
    unsteered_text: str


@dataclass(frozen=True)
class SteeringSweep:
    """For each coefficient: the answer's probability at the last position, and the unit's activation
    there (after steering) when a unit was given."""

    hook: str
    coefficients: tuple[float, ...]
    answer_prob: np.ndarray  # [coefficient]
    unit_activation: np.ndarray | None  # [coefficient]


def gap_weighted_mean(normalised: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """The mean over prompts (axis 0) of normalised scores, each prompt weighted by |its gap|: the
    pooled ratio sum(patched - corrupted) / sum(clean - corrupted) when the gaps share a sign, so a
    prompt whose clean and corrupted runs barely differ cannot swamp the rest. NaN scores (no gap)
    are left out; all NaN gives NaN."""
    values = np.asarray(normalised, dtype=float)
    weights = np.abs(np.asarray(gaps, dtype=float)).reshape((-1,) + (1,) * (values.ndim - 1))
    weights = np.where(np.isnan(values), 0.0, np.broadcast_to(weights, values.shape))
    total = weights.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(values) * weights).sum(0) / total, np.nan)


def _ranked_heads(values: np.ndarray, top: int) -> tuple[tuple[Component, float], ...]:
    order = np.argsort(-values, axis=None)[:top]
    n_heads = values.shape[1]
    return tuple((head(int(i) // n_heads, int(i) % n_heads), float(values.flat[i])) for i in order)
