"""The settings of every long-running job, torch-free: their defaults, their ranges and their help.

Plain frozen dataclasses that ``precompute`` runs with and the CLI builds its options from (each
field's ``help`` is in its metadata, read by ``neurodash.cli``), so a default is written once:

- ``PrecomputeConfig``: the streaming pass (``precompute.run_precompute``), with its
  ``AccumulatorConfig`` (what each unit keeps: examples, quantile sample, histogram);
- ``TrainSAEConfig``: training an SAE (``precompute.sae.train_sae``), with its ``SAEHyperparams``;
- ``MaximizeConfig``: activation maximization (``precompute.live.maximize``).

A value out of range raises ``NeurodashError`` with one line that names the CLI option.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from neurodash.errors import NeurodashError

DEFAULT_MODEL = "smollm2-135m"  # the embedded model (precompute.models)
DEFAULT_DATASET = "python-docs"  # the embedded corpus (precompute.corpus)
DEFAULT_LENGTH = 12  # maximization: prompt tokens after BOS
DEFAULT_STEPS = 40  # maximization: a middle-layer unit of the default model in under 2 minutes on 2 CPU cores
MAX_LENGTH = 64
MAX_STEPS = 10_000

T = TypeVar("T")


def option(default: T, help: str) -> T:
    """A field with its default and the help text the CLI shows for it."""
    return field(default=default, metadata={"help": help})


def required(help: str):
    """A field without a default, with its help text."""
    return field(metadata={"help": help})


def _model() -> str:
    return option(DEFAULT_MODEL, "embedded 'smollm2-135m', a local HF folder, or a hub name")


def _dataset() -> str:
    return option(
        DEFAULT_DATASET, "embedded 'python-docs', a .txt/.jsonl/.parquet file or folder, or a hub name"
    )


def _split() -> str:
    return option("train", "dataset split (hub datasets)")


def _text_column() -> str:
    return option("text", "the dataset's column of text")


def _ctx() -> int:
    return option(128, "tokens per window")


def _device() -> str:
    return option("cpu", "cpu, cuda, cuda:1, ... or mps")


FORWARD_DTYPES = ("float32", "bfloat16")  # --dtype: what the model's forward pass runs in
DEVICE_FORM = re.compile(r"cpu|mps|cuda(:\d+)?")


def check_device_name(device: str) -> None:
    """Refuse a device string torch would not know (its availability is checked where torch is)."""
    if not DEVICE_FORM.fullmatch(device):
        raise NeurodashError(f"--device {device}: not a device; use cpu, cuda, cuda:N (N from 0) or mps")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(config: object, low: int | float, *names: str) -> None:
    """One clear line for the first of ``names`` below ``low``."""
    for name in names:
        if getattr(config, name) < low:
            raise NeurodashError(f"{_flag(name)} must be at least {low}")


@dataclass(frozen=True)
class AccumulatorConfig:
    """What the pass keeps of each unit: its examples, a quantile sample and a histogram."""

    top_k: int = option(20, "top examples per unit")
    bottom_k: int = option(10, "bottom (most negative) examples per unit")
    quantile_groups: int = option(5, "quantile groups of examples per unit")
    per_group: int = option(4, "examples per quantile group")
    window: int = option(32, "tokens stored around each example's extreme token")
    window_before: int = option(24, "of which this many come before it, where the sequence allows")
    hist_bins: int = option(64, "histogram bins on each side of zero")
    seed: int = option(0, "seed of the quantile sample's hash")

    def __post_init__(self):
        _at_least(self, 1, "top_k", "quantile_groups", "window", "hist_bins")
        _at_least(self, 0, "bottom_k", "per_group", "window_before")

    @property
    def sample_size(self) -> int:
        return self.quantile_groups * self.per_group


@dataclass(frozen=True)
class PrecomputeConfig:
    """The streaming pass: corpus, model, which units, and what to keep of them."""

    out: str | Path = required("the store file to write (.duckdb)")
    model: str = _model()
    dataset: str = _dataset()
    split: str = _split()
    text_column: str = _text_column()
    layers: tuple[int, ...] | None = option(None, "e.g. 0-29 or 0,15,29 (default: every layer)")
    tokens: int = option(65_536, "corpus tokens to read")
    skip_tokens: int = option(
        0, "corpus tokens to pass over first (whole windows): text disjoint from a store of --tokens N"
    )
    shuffle: bool = option(
        True, "sample documents (pieces of long ones) across the whole corpus; off: read them in order"
    )
    sample_seed: int = option(0, "seed of the corpus sample")
    ctx: int = _ctx()
    batch_size: int = option(8, "windows per forward pass")
    device: str = _device()
    dtype: str = option(
        "float32",
        "the forward pass's dtype: float32, or bfloat16 (faster on GPUs and bf16 CPUs; rounds activations)",
    )
    keep_bos: bool = option(False, "keep the first (BOS) position in examples and statistics")
    saes: tuple[str, ...] = option(
        (), "an SAE whose features to track too: a SAELens folder or release/sae_id (repeatable)"
    )
    n_logits: int = option(10, "top boosted and suppressed tokens kept per unit")
    n_neighbors: int = option(10, "nearest units kept per unit (and SAE links per neuron)")
    scores: bool = option(True, "polysemanticity scores; off for a bare pass (heads keep theirs)")
    heads: bool = option(
        True, "track every attention head of the layers too (its output norm, attention rows and scores)"
    )
    context_dims: int = option(
        32, "dimensions of the random projection kept per example for context clusters"
    )
    overwrite: bool = option(False, "replace the output if it exists")
    examples: AccumulatorConfig = field(default_factory=AccumulatorConfig)
    block_batches: int = option(
        8, "batches per block: shards and checkpoints split a run by blocks (their sums add up exactly)"
    )

    def __post_init__(self):
        _at_least(self, 0, "skip_tokens")
        _at_least(self, 1, "tokens", "batch_size", "n_logits", "n_neighbors", "context_dims", "block_batches")
        _at_least(self, 2, "ctx")
        check_device_name(self.device)
        if self.dtype not in FORWARD_DTYPES:
            raise NeurodashError(f"--dtype {self.dtype}: use {' or '.join(FORWARD_DTYPES)}")
        if self.tokens < self.ctx:
            raise NeurodashError(f"--tokens {self.tokens} is less than one window (--ctx {self.ctx})")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of a precompute run (``0/1``: the whole run)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` with 0 <= I < N, as ``--shard`` takes it."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 0 <= int(m[1]) < int(m[2]):
            raise NeurodashError(f"--shard {text}: not I/N with 0 <= I < N, e.g. 0/4 for the first of four")
        return cls(int(m[1]), int(m[2]))

    def owns(self, block: int) -> bool:
        return block % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class SAEHyperparams:
    """The SAE and its optimiser. The defaults train a useful SAE in minutes on a laptop CPU."""

    d_sae: int = option(4096, "number of features")
    k: int = option(32, "features kept per token, TopK")
    lr: float = option(3e-3, "Adam learning rate (constant, then linear decay to 0 over the last third)")
    batch_tokens: int = option(2048, "tokens per optimiser step")
    dead_after: int = option(50_000, "tokens without firing before a feature counts as dead (AuxK loss)")
    seed: int = option(0, "seed of the SAE's initialisation and of the training order")

    def __post_init__(self):
        _at_least(self, 1, "d_sae", "k", "batch_tokens", "dead_after")
        if self.k > self.d_sae:
            raise NeurodashError(f"--k {self.k} is more than --d-sae {self.d_sae}")
        if not self.lr > 0:
            raise NeurodashError("--lr must be positive")


@dataclass(frozen=True)
class TrainSAEConfig:
    """Training an SAE on one hook: the model and corpus it reads, and the SAE's hyperparameters."""

    out: str | Path = required("the SAE folder to write (SAELens format)")
    hook: str = required("the TransformerLens hook to decompose, e.g. blocks.15.mlp.hook_post")
    model: str = _model()
    dataset: str = _dataset()
    split: str = _split()
    text_column: str = _text_column()
    tokens: int = option(200_000, "training tokens (activations the SAE sees)")
    ctx: int = _ctx()
    # 64 windows (8k tokens) a pass: on a CPU a larger batch costs markedly less per token than 16
    batch_size: int = option(64, "windows per forward pass of the model")
    eval_tokens: int = option(8192, "held-out tokens for the final metrics")
    device: str = _device()
    bf16_lm: bool | None = option(
        None, "bf16 autocast for the model's forward pass; None: where the hardware has it"
    )
    # measured on a CPU with AMX, 65k tokens, same seed: 0.70x the time, the same explained variance
    bf16_sae: bool | None = option(
        None, "bf16 autocast for the SAE's training steps; None: where the hardware has it"
    )
    overwrite: bool = option(False, "replace the output if it exists")
    sae: SAEHyperparams = field(default_factory=SAEHyperparams)

    def __post_init__(self):
        _at_least(self, 1, "tokens", "batch_size", "eval_tokens")
        check_device_name(self.device)
        if self.ctx < 2:
            raise NeurodashError(f"--ctx {self.ctx} is too short")
        if self.tokens < self.sae.batch_tokens:
            raise NeurodashError(
                f"--tokens {self.tokens} is less than one optimiser step (--batch-tokens {self.sae.batch_tokens})"
            )

    @property
    def steps(self) -> int:
        """Optimiser steps: SAELens steps until it has seen ``tokens``, in whole batches."""
        return math.ceil(self.tokens / self.sae.batch_tokens)


@dataclass(frozen=True)
class MaximizeConfig:
    """Activation maximization's search. The defaults keep a middle-layer unit of the default model
    under 2 minutes on a 2-core CPU (``benchmarks/maximize_quality.py``)."""

    length: int = option(DEFAULT_LENGTH, "prompt tokens after BOS")
    steps: int = option(DEFAULT_STEPS, "optimizer steps")
    seed: int = option(0, "seed of every random choice of the search")
    penalties: tuple[float, ...] = option(
        (0.0, 0.5, 1.0, 2.0, 4.0, 8.0), "fluency penalties: one member of the population each"
    )
    batch: int = option(96, "single-token swaps screened per step, over the population")
    shortlist: int = option(24, "of those, evaluated with the full forward pass per step")
    top_k: int = option(64, "candidate tokens per position")
    corpus_seeds: int = option(3, "members started from top corpus examples (the rest start at random)")

    def __post_init__(self):
        if not 1 <= self.length <= MAX_LENGTH:
            raise NeurodashError(f"--length must be between 1 and {MAX_LENGTH} tokens (got {self.length})")
        if not 1 <= self.steps <= MAX_STEPS:
            raise NeurodashError(f"--steps must be between 1 and {MAX_STEPS} (got {self.steps})")
        if not self.penalties or any(p < 0 for p in self.penalties):
            raise NeurodashError("fluency penalties must be one or more numbers >= 0")
        if min(self.batch, self.shortlist) < self.population:
            raise NeurodashError(f"batch and shortlist must be at least the population ({self.population})")
        if self.top_k < 1:
            raise NeurodashError("top_k must be at least 1")
        if self.corpus_seeds < 0:
            raise NeurodashError("corpus_seeds must be >= 0")

    @property
    def population(self) -> int:
        return len(self.penalties)
