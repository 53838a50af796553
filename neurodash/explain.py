"""Explanations of units and their scores, from a store's examples alone (no model, no torch).

The pattern explainer works in the spirit of Neuron to Graph (Foote et al. 2023) on what a store
keeps: a unit's strongest examples (tokens and the unit's activation at every token). Each token
where the unit fires strongly (``FIRES`` of its max) is a *trigger*; the explainer grows, greedily,
the few patterns that cover those triggers most precisely among every token of the examples: the
trigger token alone (`` import``), the trigger after a token that must precede it (``B`` after
``A``, up to ``MAX_DISTANCE`` places before), or any token after one (the token after ``(``).
Without a model it cannot truncate or replace context as N2G does; the precision test over the
examples' other tokens (the same trigger where the unit stays quiet) is what stands in for them.
With a model, ``precompute.n2g`` runs those steps and hands their ``Evidence`` over as plain data:
each example's required tokens become one more candidate (the trigger with all of them at their
distances), and each replacement that silenced the unit becomes one more row for the precision
test (the context with the replaced token blanked, the unit quiet there), so that a pattern which
ignores a token the unit needs loses precision; the greedy choice is the same.

Scores come from simulation on held-out windows (``score``): a simulator predicts the unit's
activation at every held-out token from the explanation alone, for a pattern explanation by
matching its patterns, for a text one by matching the tokens it quotes (``quoted_patterns``);
``correlation`` is Pearson's r with the true activations (OpenAI's correlation scoring),
``precision``/``recall`` those of "fires strongly" (delphi's detection). The explainer sees the
top examples of even rank; the held-out windows are the others (top of odd rank, the quantile
samples and the bottom ones, firing and quiet alike), their tokens that no shown window covers;
or, better, a held-out store's windows of the unit (``with_held_out``: ``neurodash.heldout``, corpus
text after the store's, which the explainer's store never read).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from neurodash.units import UnitRef

FIRES = 0.5  # "fires strongly": at least this fraction of the unit's max activation
MAX_PATTERNS = 6
MAX_DISTANCE = 3  # how far before the trigger a required token may be
MIN_CONTEXT_SUPPORT = 2  # a pattern with a required token must cover this many triggers
MIN_PRECISION = 0.2  # a pattern must fire strongly on at least this share of the tokens it matches
MOST_WRONG = 8  # held-out tokens kept in ``details`` where the simulation was most wrong
CONTEXT_SHOWN = 8  # tokens before a most-wrong token kept with it

PATTERN = "pattern"  # the offline explainer's name in the explanations file
PATTERN_N2G = "pattern+n2g"  # the same with the model's truncation and replacement evidence


@dataclass(frozen=True)
class Window:
    """One stored window of one unit: its tokens, up to ``MAX_DISTANCE`` tokens of the sequence
    before them (``context``, for patterns that look back) and the unit's activation at each token."""

    seq_id: int
    start: int  # position of the window's first token in its sequence
    context: tuple[int, ...]
    token_ids: tuple[int, ...]
    acts: tuple[float, ...]
    bucket: str = "top"
    rank: int = 0


@dataclass(frozen=True)
class UnitTexts:
    """What a unit is explained from and scored on: windows shown to the explainer, and held-out ones."""

    ref: UnitRef
    max_act: float
    shown: tuple[Window, ...]
    held_out: tuple[Window, ...]


@dataclass(frozen=True)
class Evidence:
    """What the model steps (``precompute.n2g``) found on one example of a unit: its trigger (the max
    token), the ``context`` before it that the truncation kept (BOS left out), the activation on the
    full context and the fraction of it kept, and per replaced distance (1: the token right before the
    trigger) the activation with that token replaced by a neutral one; ``important`` are the
    (distance, token) whose replacement lost more than the threshold."""

    seq_id: int
    pos: int
    trigger: int
    context: tuple[int, ...]
    activation: float
    kept: float
    replaced: tuple[float, ...]
    important: tuple[tuple[int, int], ...]

    def counterfactuals(self) -> list[Window]:
        """Each replacement that silenced the unit as a one-token window: the trigger, the kept context
        before it with the replaced token blanked (-1, as no token: no pattern is grown from it), and
        the example's activation scaled by what the replacement kept of the truncated context's (a
        truncated context keeps only part of it by design). A harmless replacement adds no row: it
        would only repeat the example's own context, inflating the support of whatever it holds."""
        out = []
        needed = {d for d, _ in self.important}
        for d, replaced in enumerate(self.replaced, start=1):
            if d not in needed:
                continue
            ctx = list(self.context[-MAX_DISTANCE:])
            if d <= len(ctx):
                ctx[-d] = -1
            act = replaced / self.kept if self.kept > 0 else 0.0
            out.append(Window(-1, -1, tuple(ctx), (self.trigger,), (act,), "n2g"))
        return out

    def candidate(self) -> Pattern | None:
        """The trigger with every important token within ``MAX_DISTANCE`` at its distance."""
        before = tuple((d, frozenset((t,))) for d, t in sorted(self.important) if d <= MAX_DISTANCE)
        return Pattern(frozenset((self.trigger,)), before) if before else None

    def to_json(self) -> dict:
        return {
            "seq_id": self.seq_id,
            "pos": self.pos,
            "trigger": self.trigger,
            "kept_length": len(self.context),
            "kept": round(self.kept, 4),
            "important": [list(i) for i in self.important],
        }


@dataclass(frozen=True)
class Pattern:
    """Fires on a token in ``triggers`` (empty: any token) that has, ``d`` places before it, a token of
    each ``(d, tokens)`` in ``before``; predicts ``value`` (a fraction of the unit's max) there."""

    triggers: frozenset[int]
    before: tuple[tuple[int, frozenset[int]], ...] = ()
    value: float = 1.0
    support: int = 0  # triggers it covers in the shown examples

    def to_json(self) -> dict:
        return {
            "triggers": sorted(self.triggers),
            "before": [[d, sorted(t)] for d, t in self.before],
            "value": round(self.value, 4),
            "support": self.support,
        }

    @staticmethod
    def from_json(d: dict) -> Pattern:
        return Pattern(
            frozenset(d["triggers"]),
            tuple((int(k), frozenset(t)) for k, t in d["before"]),
            float(d["value"]),
            int(d.get("support", 0)),
        )


@dataclass(frozen=True)
class WrongToken:
    """A held-out token where the simulation was far off: true and simulated, as fractions of max."""

    seq_id: int
    pos: int
    token: str
    context: str  # the tokens before it
    true: float
    simulated: float


@dataclass(frozen=True)
class Score:
    correlation: float | None  # None when the true activations are constant (nothing to predict)
    precision: float | None  # None when the simulation never predicts "fires strongly"
    recall: float | None  # None when the unit never fires strongly on the held-out tokens
    n_scored: int
    n_firing: int
    most_wrong: tuple[WrongToken, ...]


@dataclass(frozen=True)
class Explanation:
    """A unit's explanation by one explainer, with its score; ``details`` as the file keeps it."""

    ref: UnitRef
    explainer: str
    text: str
    correlation: float | None
    precision: float | None
    recall: float | None
    n_scored: int
    details: dict = field(default_factory=dict, compare=False, hash=False)
    created_at: datetime | None = None

    def patterns(self) -> list[Pattern]:
        return [Pattern.from_json(p) for p in self.details.get("patterns", [])]

    def most_wrong(self) -> list[WrongToken]:
        return [WrongToken(**w) for w in self.details.get("most_wrong", [])]


# --- the pattern explainer -------------------------------------------------------------------


def explain_patterns(
    windows: Sequence[Window], max_act: float, evidence: Sequence[Evidence] = ()
) -> list[Pattern]:
    """The few patterns that cover the tokens where the unit fires strongly in ``windows``, most
    precisely among all their tokens (see the module's docstring); strongest coverage first. With the
    model steps' ``evidence``, their candidates and counterfactual rows join in."""
    if max_act <= 0 or not windows:
        return []
    windows = [*windows, *(w for e in evidence for w in e.counterfactuals())]
    grid, acts = _token_grid(windows)
    frac = acts / max_act
    strong = frac >= FIRES
    if not strong.any():
        return []
    candidates = _candidates(grid[strong])
    candidates += [c for c in dict.fromkeys(e.candidate() for e in evidence) if c and c not in candidates]
    masks = np.stack([_grid_matches(grid, c) for c in candidates])
    matched = masks.sum(axis=1)
    precision = (masks & strong).sum(axis=1) / np.maximum(matched, 1)
    needs = np.array([MIN_CONTEXT_SUPPORT if c.before else 1 for c in candidates])
    covered = np.zeros_like(strong)
    patterns = []
    while len(patterns) < MAX_PATTERNS and not covered[strong].all():
        hits = (masks & strong & ~covered).sum(axis=1)
        gain = np.where((hits >= needs) & (precision >= MIN_PRECISION), hits * precision**2, 0.0)
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            break
        mask = masks[best]
        value = float(np.clip(frac[mask].mean(), 0.0, 1.0))
        patterns.append(Pattern(candidates[best].triggers, candidates[best].before, value, int(hits[best])))
        covered |= mask & strong
    return patterns


def _token_grid(windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    """Per token of every window: column 0 its id, column d the id d places before (-1: none); and acts."""
    rows, acts = [], []
    for w in windows:
        ids = np.asarray(w.context + w.token_ids, dtype=np.int64)
        first = len(w.context)
        cols = [ids[first:]]
        for d in range(1, MAX_DISTANCE + 1):
            back = np.full(len(w.token_ids), -1, dtype=np.int64)
            lo = max(0, d - first)
            back[lo:] = ids[first + lo - d : len(ids) - d]
            cols.append(back)
        rows.append(np.stack(cols, axis=1))
        acts.append(np.asarray(w.acts, dtype=np.float64))
    return np.concatenate(rows), np.concatenate(acts)


def _candidates(strong_rows: np.ndarray) -> list[Pattern]:
    """Patterns that would cover a strong token: its own token alone or after a token before it, or
    any token after one."""
    seen: set[tuple] = set()
    for row in strong_rows:
        t = int(row[0])
        seen.add((t, ()))
        for d in range(1, MAX_DISTANCE + 1):
            if row[d] >= 0:
                seen.add((t, ((d, int(row[d])),)))
                if d <= 2:
                    seen.add((None, ((d, int(row[d])),)))
    return [
        Pattern(frozenset() if t is None else frozenset((t,)), tuple((d, frozenset((c,))) for d, c in before))
        for t, before in sorted(seen, key=lambda c: (len(c[1]), c[0] is None, repr(c)))
    ]  # simplest first: of patterns that gain alike, the greedy choice takes the first


def _grid_matches(grid: np.ndarray, p: Pattern) -> np.ndarray:
    hit = np.ones(len(grid), dtype=bool)
    if p.triggers:
        hit &= _among(grid[:, 0], p.triggers)
    for d, tokens in p.before:
        hit &= _among(grid[:, d], tokens)
    return hit


def _among(column: np.ndarray, tokens: frozenset[int]) -> np.ndarray:
    if len(tokens) == 1:
        return column == next(iter(tokens))
    return np.isin(column, list(tokens))


def describe(patterns: Sequence[Pattern], vocab: Sequence[str]) -> str:
    """Patterns as words: "`6` after `,`; ` import`; the token after `(`"."""
    if not patterns:
        return "no pattern: the unit never fires strongly on its top examples"
    return "; ".join(_describe_one(p, vocab) for p in patterns)


def _describe_one(p: Pattern, vocab: Sequence[str]) -> str:
    what = " or ".join(show_token(vocab[t]) for t in sorted(p.triggers)) if p.triggers else "the token"
    for d, tokens in p.before:
        where = "after" if d == 1 else f"{d} tokens after"
        what += f" {where} " + " or ".join(show_token(vocab[t]) for t in sorted(tokens))
    return what


def show_token(token: str) -> str:
    """A token in backticks, with newlines and tabs written out."""
    return "`" + token.replace("\n", "\\n").replace("\t", "\\t") + "`"


# --- simulation and scoring ------------------------------------------------------------------


def simulate(patterns: Sequence[Pattern], window: Window) -> np.ndarray:
    """The predicted activation (fraction of max) at each token of ``window``: the largest value of
    the patterns that match there, 0 where none does."""
    return _simulate_grid(patterns, _token_grid([window])[0])


def _simulate_grid(patterns: Sequence[Pattern], grid: np.ndarray) -> np.ndarray:
    out = np.zeros(len(grid))
    for p in patterns:
        out = np.where(_grid_matches(grid, p), np.maximum(out, p.value), out)
    return out


def score(patterns: Sequence[Pattern], texts: UnitTexts, vocab: Sequence[str]) -> Score:
    """Simulate ``patterns`` on every held-out token and compare with the truth (see the module's
    docstring)."""
    windows = texts.held_out
    if not windows or texts.max_act <= 0:
        return Score(None, None, None, 0, 0, ())
    grid, acts = _token_grid(windows)
    true = acts / texts.max_act
    sim = _simulate_grid(patterns, grid)
    fires, said = true >= FIRES, sim >= FIRES
    return Score(
        _pearson(true, sim),
        float((fires & said).sum() / said.sum()) if said.any() else None,
        float((fires & said).sum() / fires.sum()) if fires.any() else None,
        len(true),
        int(fires.sum()),
        _most_wrong(windows, true, sim, vocab),
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0:
        return None
    if y.std() == 0:
        return 0.0  # a constant prediction explains nothing
    return float(np.corrcoef(x, y)[0, 1])


def _most_wrong(
    windows: Sequence[Window], true: np.ndarray, sim: np.ndarray, vocab: Sequence[str]
) -> tuple[WrongToken, ...]:
    where = [(w, i) for w in windows for i in range(len(w.token_ids))]
    order = np.argsort(-np.abs(true - sim), kind="stable")[:MOST_WRONG]
    found = []
    for k in order:
        if abs(true[k] - sim[k]) < 0.1:
            break
        w, i = where[int(k)]
        before = (w.context + w.token_ids)[max(0, len(w.context) + i - CONTEXT_SHOWN) : len(w.context) + i]
        found.append(
            WrongToken(
                w.seq_id,
                w.start + i,
                vocab[w.token_ids[i]],
                "".join(vocab[t] for t in before),
                round(float(true[k]), 4),
                round(float(sim[k]), 4),
            )
        )
    return tuple(found)


def scored(
    texts: UnitTexts, explainer: str, text: str, patterns: Sequence[Pattern], vocab: Sequence[str], **details
) -> Explanation:
    """An explanation scored by simulating ``patterns`` on the unit's held-out windows."""
    s = score(patterns, texts, vocab)
    return Explanation(
        texts.ref,
        explainer,
        text,
        s.correlation,
        s.precision,
        s.recall,
        s.n_scored,
        {
            "patterns": [p.to_json() for p in patterns],
            "n_firing": s.n_firing,
            "n_shown": len(texts.shown),
            "n_held_out_windows": len(texts.held_out),
            "most_wrong": [w.__dict__ for w in s.most_wrong],
            **details,
        },
    )


def explain_unit(
    texts: UnitTexts, vocab: Sequence[str], evidence: Sequence[Evidence] | None = None
) -> Explanation:
    """The pattern explainer's scored explanation of one unit; with the model steps' ``evidence``
    (even none found), explainer ``PATTERN_N2G``."""
    patterns = explain_patterns(texts.shown, texts.max_act, evidence or ())
    text = describe(patterns, vocab)
    if evidence is None:
        return scored(texts, PATTERN, text, patterns, vocab)
    return scored(texts, PATTERN_N2G, text, patterns, vocab, n2g=[e.to_json() for e in evidence])


# --- text explanations (an LLM's) ------------------------------------------------------------

_QUOTED = re.compile(r"`([^`]+)`|\"([^\"]+)\"|“([^”]+)”")


def quoted_patterns(text: str, vocab: Sequence[str]) -> list[Pattern]:
    """The simulator of a text explanation: it fires (value 1) on every token that, stripped and case
    ignored, equals a string the text quotes in backticks or double quotes."""
    wanted = {q.strip().lower() for m in _QUOTED.finditer(text) for q in m.groups() if q and q.strip()}
    if not wanted:
        return []
    ids = frozenset(i for i, t in enumerate(vocab) if t.strip().lower() in wanted)
    return [Pattern(ids)] if ids else []


# --- which windows are shown, which held out --------------------------------------------------


def split_windows(ref: UnitRef, max_act: float, windows: Sequence[Window]) -> UnitTexts:
    """Top windows of even rank are shown to the explainer; the others are held out, less every token
    a shown window covers, one window per stretch of a sequence (overlaps counted once)."""
    shown = tuple(w for w in windows if w.bucket == "top" and w.rank % 2 == 0)
    taken: dict[int, set[int]] = {}
    for w in shown:
        taken.setdefault(w.seq_id, set()).update(range(w.start, w.start + len(w.token_ids)))
    held = []
    for w in windows:
        if w.bucket == "top" and w.rank % 2 == 0:
            continue
        held.extend(_untaken_runs(w, taken.setdefault(w.seq_id, set())))
    return UnitTexts(ref, max_act, shown, tuple(held))


def with_held_out(texts: UnitTexts, windows: Sequence[Window]) -> UnitTexts:
    """``texts`` scored on other held-out ``windows`` (a held-out store's, text the explainer's store
    never read): every one of them, one window per stretch of a sequence (overlaps counted once)."""
    taken: dict[int, set[int]] = {}
    held = [run for w in windows for run in _untaken_runs(w, taken.setdefault(w.seq_id, set()))]
    return UnitTexts(texts.ref, texts.max_act, texts.shown, tuple(held))


def _untaken_runs(w: Window, taken: set[int]) -> list[Window]:
    """The stretches of ``w`` whose tokens are not in ``taken`` (then marked taken), with context."""
    full = w.context + w.token_ids
    lead = len(w.context)
    runs, i, n = [], 0, len(w.token_ids)
    while i < n:
        if w.start + i in taken:
            i += 1
            continue
        j = i
        while j < n and w.start + j not in taken:
            j += 1
        ctx = full[max(0, lead + i - MAX_DISTANCE) : lead + i]
        runs.append(Window(w.seq_id, w.start + i, ctx, w.token_ids[i:j], w.acts[i:j], w.bucket, w.rank))
        i = j
    taken.update(range(w.start, w.start + n))
    return runs
