"""The values that pass between layers: sources, unit references, statistics and examples.

A *unit* is one scalar direction read at one hook: an MLP neuron (``blocks.L.mlp.hook_post``,
index i), an SAE feature, or an attention head (``blocks.L.attn.hook_z``, query head h; its scalar is
the norm of its output at a query position). A *source* is the set of units read at one hook (and, for features,
through one SAE). Everything downstream treats neurons and features alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from neurodash.errors import NeurodashError

NEURON = "neuron"
SAE_FEATURE = "sae_feature"
HEAD = "head"  # an attention head: query head h of ``blocks.L.attn.hook_z`` (its activation: ||z_h||)


@dataclass(frozen=True)
class Source:
    source_id: str  # e.g. "L12.mlp" (neurons) or "L12.sae" (features of an SAE on layer 12)
    model: str
    hook: str  # TransformerLens hook name, e.g. "blocks.12.mlp.hook_post"
    kind: str  # NEURON, SAE_FEATURE or HEAD
    layer: int
    n_units: int
    n_tokens: int
    sae: str | None = None
    config: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, order=True)
class UnitRef:
    source_id: str
    unit: int

    def __str__(self) -> str:
        return f"{self.source_id}/{self.unit}"


@dataclass(frozen=True)
class UnitStats:
    ref: UnitRef
    max_act: float
    min_act: float
    mean_act: float
    std_act: float
    skew: float
    kurtosis: float
    density: float  # fraction of counted tokens where the unit is > 0
    n_tokens: int
    hist_edges: tuple[float, ...]
    hist_counts: tuple[int, ...]


@dataclass(frozen=True)
class Link:
    """A unit of another source that this unit is tied to through an SAE's decoder.

    From a neuron: a feature of an SAE on its ``hook_post``, ``share`` being the feature's share of
    the neuron's activation mass. From a feature: a neuron its decoder writes to, ``share`` being
    that neuron's share of the decoder row's squared norm. ``weight`` is the decoder entry
    ``W_dec[feature, neuron]`` either way.
    """

    ref: UnitRef
    weight: float
    share: float


@dataclass(frozen=True)
class Example:
    """One context window of one unit: tokens and the unit's activation at each of them."""

    ref: UnitRef
    bucket: str  # "top", "bottom" or a quantile group such as "q0.50"
    rank: int  # 0 is the strongest in its bucket
    seq_id: int
    pos: int  # position of the example's max token in its sequence
    start: int  # position of the window's first token in its sequence
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    acts: tuple[float, ...]

    @property
    def peak(self) -> int:
        """The max token's index in the window."""
        return self.pos - self.start

    @property
    def value(self) -> float:
        return self.acts[self.peak]

    @property
    def max_token(self) -> str:
        return self.tokens[self.peak]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class AttentionRow:
    """A head example's query row: the attention from the example's ``pos`` to each token of its
    window (``pattern[i]`` to ``start + i``; 0 after ``pos``), and, where stored, the attention mass
    that falls on keys before the window (``before``)."""

    bucket: str
    rank: int
    pattern: tuple[float, ...]
    before: float | None = None


# A head's scores (``scores.metric``): on synthetic probes (``precompute.heads``), then over the corpus.
HEAD_PROBE_METRICS = ("induction", "previous_token", "duplicate_token", "bos", "copying")
HEAD_CORPUS_METRICS = ("attn_bos", "attn_previous", "attn_same_token", "attn_distance", "attn_entropy")
HEAD_METRICS = HEAD_PROBE_METRICS + HEAD_CORPUS_METRICS


@dataclass(frozen=True)
class LogitEffect:
    sign: str  # "+" boosted, "-" suppressed
    rank: int
    token_id: int
    token: str
    value: float


_SHORT_REF = re.compile(r"^\s*L(\d+)\s*([NFH])\s*(\d+)\s*$", re.IGNORECASE)
_LONG_REF = re.compile(r"^\s*/?(?:unit/)?([^/\s]+)/(\d+)\s*$")


def neuron_source_id(layer: int) -> str:
    return f"L{layer}.mlp"


def head_source_id(layer: int) -> str:
    """The source of layer ``layer``'s attention heads (one unit per query head)."""
    return f"L{layer}.attn"


def sae_source_id(layer: int, name: str = "") -> str:
    return f"L{layer}.sae" + (f".{name}" if name else "")


def parse_ref(text: str, sources: list[Source] | None = None) -> UnitRef:
    """Parse ``L12N345`` (neuron), ``L12F7`` (feature of the layer's first SAE), ``L12H3`` (head) or
    ``<source>/<index>``.

    With ``sources`` given, the reference is also checked against them.
    """
    m = _SHORT_REF.match(text)
    if m:
        layer, kind, index = int(m.group(1)), m.group(2).upper(), int(m.group(3))
        if kind == "N":
            ref = UnitRef(neuron_source_id(layer), index)
        elif kind == "H":
            ref = UnitRef(head_source_id(layer), index)
        else:
            candidates = [s for s in sources or [] if s.kind == SAE_FEATURE and s.layer == layer]
            ref = UnitRef(candidates[0].source_id if candidates else sae_source_id(layer), index)
    elif m := _LONG_REF.match(text):
        ref = UnitRef(m.group(1), int(m.group(2)))
    else:
        raise NeurodashError(
            f"cannot read unit reference {text!r}: use L12N345, L12F7, L12H3 or <source>/<index>"
        )
    if sources is not None:
        by_id = {s.source_id: s for s in sources}
        if ref.source_id not in by_id:
            raise NeurodashError(f"no source {ref.source_id!r} in this store")
        if not 0 <= ref.unit < by_id[ref.source_id].n_units:
            n = by_id[ref.source_id].n_units
            raise NeurodashError(f"unit {ref.unit} is out of range for {ref.source_id} (0..{n - 1})")
    return ref


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-29"``, ``"0,15,29"`` or a mix such as ``"0-3,10"`` -> a sorted tuple of layers."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            layers.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise NeurodashError(
            f"cannot read layers {text!r}: use ranges and lists such as 0-29 or 0,15,29"
        ) from None
    if not layers:
        raise NeurodashError(f"layers {text!r} names no layer")
    return tuple(sorted(layers))


@dataclass(frozen=True)
class TokenPeaks:
    """A unit found by what its top examples peak on: ``n`` of its ``n_top`` top examples peak on a
    matching token, the strongest at ``value``; ``tokens`` are the matching tokens (a few)."""

    ref: UnitRef
    n: int
    n_top: int
    value: float
    tokens: tuple[str, ...]
