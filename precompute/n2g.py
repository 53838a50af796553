"""Neuron to Graph's model steps (Foote et al. 2023) on a store's units: truncate, then replace.

For each of a unit's few strongest shown examples (the context that ends at its max token, the
*trigger*, with BOS in front as the pipeline runs every window), the model is run to:

- **truncate** from the left: the shortest context ending at the trigger (BOS kept in front) that
  keeps at least ``KEEP`` (half, as N2G's pruning) of the activation on the full context (the
  store's: the pipeline ran exactly that context). Half is the explainer's own "fires strongly"
  (``neurodash.explain.FIRES``): a truncated top example still fires strongly. The candidate
  lengths (``LADDER``: 0, 1, 2, 3, 4, 6, 8, 12, 16 tokens before the trigger, then 24, 32, 48, ...
  only for the examples the short ones fail) run as right-padded sequences, the activation read at
  each one's last real token: the model is causal, so padding after a token cannot change it.
- **replace**: each of the ``REPLACE_SPAN`` tokens before the trigger inside the truncated context,
  one at a time, by a neutral token (``neutral_token``: N2G uses the padding token; ours is the
  document separator ``<|im_end|>``, which cuts context rather than removing one token, so a plain
  space is used where it is one token). A token whose replacement loses more than ``DROP`` (half)
  of the truncated context's activation is *important*: the context the unit needs.

Every candidate sequence of every example of every unit of one source runs in the same forwards
(sorted by length, cut into batches of about ``BATCH_TOKENS`` tokens); the forward stops at the
unit's layer; neurons read the hook, SAE features encode it at the read positions only. The evidence
(``neurodash.explain.Evidence``, plain data) goes to the pattern explainer (``N2GExplainer``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neurodash.errors import NeurodashError
from neurodash.explain import PATTERN_N2G, Evidence, Explanation, UnitTexts, explain_unit
from neurodash.storage import Store
from neurodash.storage.explanations import sequences
from neurodash.units import SAE_FEATURE, Source, UnitRef
from precompute.models import LoadedModel
from precompute.sae.load import LoadedSAE

KEEP = 0.5  # truncation keeps at least this fraction of the full context's activation
DROP = 0.5  # a replaced token is important when the activation loses more than this fraction
REPLACE_SPAN = 8  # tokens before the trigger that are replaced (the patterns use the first 3)
EXAMPLES = 3  # a unit's strongest shown examples that are run
LADDER = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
SHORT = 16  # the lengths up to this one run first, for every example; the longer ones where they fail
BATCH_TOKENS = 4096  # padded tokens per forward


class UnitReader(Protocol):
    """One source's units of a model: a unit's activation at one position of each sequence."""

    bos: int | None  # put in front of every context (None: the model has no BOS)
    neutral: int  # the replacement token

    def read(
        self, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, " batch"], units: Int[Tensor, " batch"]
    ) -> Float[Tensor, " batch"]:
        """Sequence i's activation of unit ``units[i]`` at position ``last[i]``."""
        ...


@dataclass(frozen=True)
class Example:
    """A unit's example: the tokens before its max token (``before``, BOS left out), that token, and
    the unit's activation there as the store keeps it (the pipeline ran exactly this context)."""

    unit: int
    seq_id: int
    pos: int
    before: tuple[int, ...]
    trigger: int
    activation: float


# --- the two steps -----------------------------------------------------------------------------


def gather_evidence(reader: UnitReader, examples: Sequence[Example]) -> list[Evidence | None]:
    """Truncate, then replace, every example (see the module's docstring); None for an example on
    which the unit does not fire (activation <= 0 on the full context)."""
    return replace_step(reader, examples, truncate_step(reader, examples))


@dataclass(frozen=True)
class Truncation:
    length: int  # tokens kept before the trigger
    activation: float  # with them
    full: float  # with the whole context


def truncate_step(reader: UnitReader, examples: Sequence[Example]) -> list[Truncation]:
    """Each example's shortest context (of the ``LADDER`` lengths) that keeps ``KEEP`` of the full
    context's activation (the store's); the full context where none does or the unit does not fire.
    The short lengths (up to ``SHORT``) run first, the longer ones only for the examples they fail."""
    found: dict[int, Truncation] = {}
    for short in (True, False):
        todo = [
            (i, n)
            for i, x in enumerate(examples)
            if i not in found and x.activation > 0
            for n in LADDER
            if n < len(x.before) and (n <= SHORT) == short
        ]
        contexts = [_context(reader, _last(examples[i].before, n), examples[i].trigger) for i, n in todo]
        acts = run_last(reader, contexts, [examples[i].unit for i, _ in todo])
        for (i, n), a in zip(todo, acts):  # in rising length per example
            if i not in found and a >= KEEP * examples[i].activation:
                found[i] = Truncation(n, float(a), examples[i].activation)
    full = [Truncation(len(x.before), x.activation, x.activation) for x in examples]
    return [found.get(i, full[i]) for i in range(len(examples))]


def replace_step(
    reader: UnitReader, examples: Sequence[Example], truncations: Sequence[Truncation]
) -> list[Evidence | None]:
    """Replace each of the ``REPLACE_SPAN`` tokens before each trigger in its truncated context."""
    variants, units = [], []
    for x, t in zip(examples, truncations):
        ctx = _last(x.before, t.length)
        for d in range(1, min(REPLACE_SPAN, t.length) + 1):
            variants.append(_context(reader, _blank(ctx, d, reader.neutral), x.trigger))
            units.append(x.unit)
    acts = run_last(reader, variants, units)
    out: list[Evidence | None] = []
    at = 0
    for x, t in zip(examples, truncations):
        ctx = _last(x.before, t.length)
        replaced = tuple(float(a) for a in acts[at : at + min(REPLACE_SPAN, t.length)])
        at += len(replaced)
        if t.full <= 0:
            out.append(None)
            continue
        lost = [(t.activation - a) / t.activation for a in replaced]
        important = tuple((d, ctx[-d]) for d, drop in enumerate(lost, start=1) if drop > DROP)
        out.append(
            Evidence(x.seq_id, x.pos, x.trigger, ctx, t.full, t.activation / t.full, replaced, important)
        )
    return out


def _last(before: tuple[int, ...], n: int) -> tuple[int, ...]:
    return before[len(before) - n :]


def _blank(ctx: tuple[int, ...], d: int, neutral: int) -> tuple[int, ...]:
    """``ctx`` with its token ``d`` places before the end replaced by ``neutral``."""
    return ctx[: len(ctx) - d] + (neutral,) + ctx[len(ctx) - d + 1 :]


def _context(reader: UnitReader, before: Sequence[int], trigger: int) -> list[int]:
    return ([reader.bos] if reader.bos is not None else []) + list(before) + [trigger]


def run_last(reader: UnitReader, contexts: Sequence[Sequence[int]], units: Sequence[int]) -> np.ndarray:
    """Each context's activation of its unit at its last token: contexts sorted by length, right
    padded (with the neutral token) and batched by ``BATCH_TOKENS``."""
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    out = np.zeros(len(contexts))
    start = 0  # an empty list of contexts runs nothing
    while start < len(order):
        longest = len(contexts[order[start]])
        stop = start + 1
        while stop < len(order):
            longest = len(contexts[order[stop]])
            if longest * (stop - start + 1) > BATCH_TOKENS:
                break
            stop += 1
        chosen = order[start:stop]
        width = max(len(contexts[i]) for i in chosen)
        tokens = torch.full((len(chosen), width), reader.neutral, dtype=torch.long)
        for row, i in enumerate(chosen):
            tokens[row, : len(contexts[i])] = torch.tensor(contexts[i], dtype=torch.long)
        last = torch.tensor([len(contexts[i]) - 1 for i in chosen])
        acts = reader.read(tokens, last, torch.tensor([units[i] for i in chosen]))
        out[chosen] = acts.float().cpu().numpy()
        start = stop
    return out


# --- readers -----------------------------------------------------------------------------------


class ModelReader:
    """A source of a ``LoadedModel``: neurons at ``hook``, or the features of ``sae`` on it."""

    def __init__(self, model: LoadedModel, hook: str, sae: LoadedSAE | None = None):
        self.model, self.hook, self.sae = model, hook, sae
        self.bos = model.bos_token_id
        self.neutral = neutral_token(model)

    def read(self, tokens: Tensor, last: Tensor, units: Tensor) -> Tensor:
        hook_acts = self.model.activations(tokens, [self.hook])[self.hook]  # stops after the hook's layer
        at = hook_acts[torch.arange(len(last)), last.to(hook_acts.device)]
        if self.sae is not None:
            with torch.inference_mode():
                at = self.sae.encode(at[:, None])[:, 0]
        return at[torch.arange(len(units)), units.to(at.device)]


def neutral_token(model: LoadedModel) -> int:
    """A plain space where it is one token, else the padding token (N2G's), else EOS, else 0."""
    space = model.tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) == 1:
        return int(space[0])
    tok = model.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id):
        if isinstance(t, int):
            return t
    return 0


# --- the explainer over a store ----------------------------------------------------------------


class N2GExplainer:
    """The pattern explainer with the model steps' evidence (``explain_run``'s ``Explainer``): before a
    batch of units is explained, ``prepare`` runs the steps on all of them, one source at a time."""

    name = PATTERN_N2G

    def __init__(self, model: LoadedModel, saes: dict[str, LoadedSAE]):
        self.model, self.saes = model, saes
        self._evidence: dict[UnitRef, list[Evidence]] = {}

    def prepare(self, store: Store, batch: Sequence[UnitTexts]) -> None:
        full = sequences(store, {w.seq_id for t in batch for w in t.shown[:EXAMPLES]})
        by_source: dict[str, list[UnitTexts]] = {}
        for t in batch:
            by_source.setdefault(t.ref.source_id, []).append(t)
        self._evidence = {}
        for source_id, texts in by_source.items():
            reader = self.reader(store.source(source_id))
            examples = [x for t in texts for x in strongest_examples(t, full, reader.bos)]
            for x, e in zip(examples, gather_evidence(reader, examples)):
                if e is not None:
                    self._evidence.setdefault(UnitRef(source_id, x.unit), []).append(e)

    def reader(self, source: Source) -> ModelReader:
        if source.kind != SAE_FEATURE:
            return ModelReader(self.model, source.hook)
        if source.source_id not in self.saes:
            raise NeurodashError(f"no SAE loaded for {source.source_id}")
        return ModelReader(self.model, source.hook, self.saes[source.source_id])

    def evidence(self, ref: UnitRef) -> list[Evidence]:
        """What the steps found on ``ref``'s examples in the batch last prepared."""
        return self._evidence.get(ref, [])

    def explain(self, texts: UnitTexts, vocab: Sequence[str]) -> Explanation:
        return explain_unit(texts, vocab, self.evidence(texts.ref))


def strongest_examples(texts: UnitTexts, full: dict[int, tuple[int, ...]], bos: int | None) -> list[Example]:
    """The unit's ``EXAMPLES`` strongest shown windows as examples: each window's max token and the
    whole stored sequence before it (its leading BOS left out)."""
    out = []
    for w in sorted(texts.shown, key=lambda w: w.rank)[:EXAMPLES]:
        if not w.acts:
            continue
        pos = w.start + int(np.argmax(w.acts))
        ids = full[w.seq_id][: pos + 1]
        first = 1 if bos is not None and ids and ids[0] == bos else 0
        act = float(max(w.acts))
        out.append(Example(texts.ref.unit, w.seq_id, pos, tuple(ids[first:-1]), ids[-1], act))
    return out


def load_n2g(store_path: str | os.PathLike, device: str = "cpu") -> N2GExplainer:
    """The store's model and SAEs, loaded for the model steps; one line if they cannot load."""
    from precompute.live.cache import cached_model, cached_sae
    from precompute.live.maximize import sae_spec

    with Store(store_path) as store:
        sources = [s for s in store.sources() if s.kind != "head"]
    if not sources:
        raise NeurodashError(f"{store_path} has no neurons or SAE features")
    model = cached_model(sources[0].model, device)
    saes = {s.source_id: cached_sae(sae_spec(s), device) for s in sources if s.kind == SAE_FEATURE}
    model.check_hooks([s.hook for s in sources])
    return N2GExplainer(model, saes)
