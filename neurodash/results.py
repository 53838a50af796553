"""What the live-model features return: plain values that cross from ``precompute`` to the app,
the CLI and the storage package, with no torch in them.

``Frontier`` and ``FoundPrompt``: the prompts that activation maximization found for a unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from neurodash.units import UnitRef, parse_ref


@dataclass(frozen=True)
class FoundPrompt:
    """A prompt (after BOS) and what the unit does on it."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # each id decoded on its own (the store's vocabulary)
    text: str  # the ids decoded together
    activation: float  # the unit at the prompt's last token: what is maximized
    cross_entropy: float  # the model's mean cross-entropy on the prompt's tokens (nats per token)
    acts: tuple[float, ...]  # the unit at every token of the prompt


@dataclass(frozen=True)
class Frontier:
    """The Pareto frontier of one run: prompts by rising cross-entropy and rising activation
    (no found prompt has both a higher activation and a lower cross-entropy than one of them)."""

    ref: UnitRef
    model: str
    length: int
    steps: int
    seed: int
    corpus_max: float  # the unit's max activation over the corpus (``unit_stats(ref).max_act``)
    prompts: tuple[FoundPrompt, ...]
    seconds: float = 0.0
    settings: dict = field(default_factory=dict, compare=False, hash=False)
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def best(self) -> FoundPrompt:
        """The prompt with the highest activation (the frontier's last)."""
        return max(self.prompts, key=lambda p: p.activation)

    def to_json(self) -> dict:
        return {
            "unit": str(self.ref),
            "model": self.model,
            "length": self.length,
            "steps": self.steps,
            "seed": self.seed,
            "corpus_max": self.corpus_max,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            "frontier": [
                {
                    "token_ids": list(p.token_ids),
                    "tokens": list(p.tokens),
                    "text": p.text,
                    "activation": p.activation,
                    "cross_entropy": p.cross_entropy,
                    "acts": list(p.acts),
                }
                for p in self.prompts
            ],
        }


def frontier_from_json(data: dict) -> Frontier:
    """The inverse of ``Frontier.to_json`` (timings rounded)."""
    return Frontier(
        parse_ref(data["unit"]),
        data["model"],
        data["length"],
        data["steps"],
        data["seed"],
        data["corpus_max"],
        tuple(
            FoundPrompt(
                tuple(p["token_ids"]),
                tuple(p["tokens"]),
                p["text"],
                p["activation"],
                p["cross_entropy"],
                tuple(p["acts"]),
            )
            for p in data["frontier"]
        ),
        data["seconds"],
        data["settings"],
    )
