"""The one streaming pass: each batch of windows runs through the model once, and every tracked
source updates its units' state from the activations it needs; the windows go to the store as they pass.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.config import PrecomputeConfig
from neurodash.units import Source
from precompute.corpus import Batch, pack_windows
from precompute.models import LoadedModel
from precompute.pipeline.accumulate import UnitAccumulator, fused_kernels
from precompute.pipeline.attention import AttentionStats, one_thread
from precompute.pipeline.exact import ExactSum
from precompute.pipeline.polysemanticity import attribution_sums, projection

P = ParamSpec("P")
R = TypeVar("R")


class Appender(Protocol):
    """Where the pass's sequences go: a ``StoreWriter``, or a shard's ``state.Sequences``."""

    def append(self, table: str, columns: dict[str, np.ndarray]) -> None: ...


@dataclass
class Tracked:
    """A source being accumulated: its metadata, the hook it reads, its directions, its state."""

    source: Source
    hook: str
    directions: Tensor  # [n_units, d_model]: what each unit writes to the residual stream
    acc: UnitAccumulator
    encode: Callable[[Tensor], Tensor] | None = None  # hook activations -> unit activations (SAEs)
    decoder: Tensor | None = None  # SAEs: [n_units, d_in] decoder rows, in the hook's space
    bridge: NeuronBridge | None = None  # SAEs on tracked neurons: what drives them (``run._write_links``)
    context_hook: str | None = None  # the representation kept at each example's token (scores)
    pattern_hook: str | None = None  # heads: their attention pattern, copied at each example's query
    attention: AttentionStats | None = None  # heads: corpus attention statistics


@dataclass
class NeuronBridge:
    """For an SAE read from tracked neurons: the decoder's positive part on the device, and the
    ``attribution_sums`` gathered so far (``[n_units, d_in]``, exact), plain and ``strong``."""

    decoder_up: Tensor
    attribution: ExactSum
    strong: ExactSum

    @classmethod
    def on(cls, decoder_up: Tensor) -> NeuronBridge:
        return cls(
            decoder_up, *(ExactSum(tuple(decoder_up.shape), decoder_up.device, -64, 4) for _ in range(2))
        )

    def update(self, neurons: Tensor, features: Tensor) -> None:
        """Add a batch's tokens (``[t, n_neurons]``, ``[t, n_features]``). On the CPU, through the
        active features alone (``fused.bridge_sums``: an SAE's features are sparse); else two
        products each for the plain and the strong sums."""
        x, a = neurons.float(), features.float()
        if x.device.type == "cpu" and fused_kernels is not None:
            by_token, token_features, token_values = _sparse_rows(a)
            by_feature, feature_tokens, feature_values = _sparse_rows(a.T)
            up = self.decoder_up.float().contiguous()
            fused_kernels.bridge_sums(
                x.contiguous().numpy(), by_token.numpy(), token_features.numpy(), token_values.numpy(),
                by_feature.numpy(), feature_tokens.numpy(), feature_values.numpy(), up.numpy(),
                self.attribution.block_to_add().numpy(), self.strong.block_to_add().numpy(),
            )  # fmt: skip
            return
        self.attribution.add(attribution_sums(x, a, self.decoder_up))
        self.strong.add(attribution_sums(x, a, self.decoder_up, strong=True))


def _sparse_rows(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``m``'s non-zeros row by row (CSR): row r's columns and values are ``[starts[r]:starts[r + 1]]``."""
    rows, cols = m.nonzero(as_tuple=True)
    starts = torch.zeros(m.shape[0] + 1, dtype=torch.long)
    starts[1:] = torch.bincount(rows, minlength=m.shape[0]).cumsum(0)
    return starts, cols.contiguous(), m[rows, cols].contiguous()


class Contexts:
    """Per hook, a fixed random projection of its activation vector at every token (the
    representation that context clusters compare), and the projections' running sum for centring."""

    def __init__(self, dims: int, device: str, seed: int):
        self.dims, self.device, self.seed = dims, device, seed
        self.matrix: dict[str, Tensor] = {}
        self.sums: dict[str, ExactSum] = {}
        self.counts: dict[str, int] = {}

    def project(self, hook: str, acts: Tensor, first: int) -> Tensor:
        if hook not in self.matrix:
            p = projection(acts.shape[-1], self.dims, self.seed)
            self.matrix[hook] = torch.from_numpy(p).to(self.device)
            self._start(hook)
        rep = acts.float() @ self.matrix[hook]
        self.sums[hook].add(rep[:, first:].sum((0, 1)))
        self.counts[hook] += rep.shape[0] * (rep.shape[1] - first)
        return rep.half()

    def _start(self, hook: str) -> None:
        if hook not in self.sums:
            self.sums[hook], self.counts[hook] = ExactSum((self.dims,), self.device), 0

    def mean(self, hook: str | None) -> np.ndarray:
        if hook not in self.sums:
            return np.zeros(self.dims, dtype=np.float32)
        return (self.sums[hook].value() / max(self.counts[hook], 1)).float().cpu().numpy()

    def flush(self) -> None:
        for s in self.sums.values():
            s.flush()

    def state(self) -> dict[str, Tensor]:
        """Per hook its exact sum and count (``{hook}.sums``, ``{hook}.count``)."""
        out = {}
        for hook, s in self.sums.items():
            out[f"{hook}.sums"] = s.state()
            out[f"{hook}.count"] = torch.tensor(self.counts[hook], dtype=torch.int64)
        return out

    def merge(self, other: dict[str, Tensor]) -> None:
        """Add another shard's ``state()`` (on an empty ``Contexts``: load it)."""
        for name, limbs in other.items():
            if name.endswith(".sums"):
                hook = name[: -len(".sums")]
                self._start(hook)
                theirs = ExactSum((self.dims,), self.device)
                theirs.load(limbs)
                self.sums[hook].merge(theirs)
                self.counts[hook] += int(other[f"{hook}.count"])


def update_source(
    t: Tracked,
    acts: dict[str, Tensor],
    seq_ids: Tensor,
    tokens: Tensor,
    first: int,
    ctx: int,
    at_token: dict[str, dict[str, Tensor]],
) -> None:
    """One source's state after one batch: its units' activations (an SAE encodes its hook's), what
    drives an SAE on tracked neurons, a layer's heads' attention statistics and rows."""
    unit_acts = acts[t.hook] if t.encode is None else t.encode(acts[t.hook])
    if t.bridge is not None:  # an SAE on tracked neurons: what drives them
        x, a = acts[t.hook][:, first:].flatten(0, 1), unit_acts[:, first:].flatten(0, 1)
        t.bridge.update(x, a)
    at_unit = None
    if t.attention is not None and t.pattern_hook is not None:  # a layer's heads
        pattern = acts[t.pattern_hook]
        t.attention.update(pattern, tokens, first)
        at_unit = {"attn": pattern.transpose(1, 2)}  # [batch, query, head, key]
    t.acc.update(
        unit_acts,
        seq_ids,
        first=first,
        ctx=ctx,
        at_token=at_token.get(t.context_hook) if t.context_hook else None,
        at_unit=at_unit,
    )


class SourceUpdater:
    """Updates every source after a batch: the large ones (neurons, SAE features) one after another,
    each on all of torch's threads; the layers' heads, whose tensors are small (a layer's pattern is
    ~1M floats), side by side on CPU threads of their own, each with one torch thread (``one_thread``:
    waking torch's threads for such tensors costs more than it saves). Sources are independent, so
    the order they finish in changes nothing."""

    def __init__(self, tracked: list[Tracked], device: str):
        self.large = [t for t in tracked if t.attention is None]
        self.heads = [t for t in tracked if t.attention is not None]
        # Side by side only through the serial CPU kernels: torch's path shares scratch buffers, and
        # numba's parallel kernels may not be called from several threads at once.
        serial = fused_kernels is not None and all(t.acc.kernels is fused_kernels.SERIAL for t in self.heads)
        workers = torch.get_num_threads() if device == "cpu" and len(self.heads) > 1 and serial else 0
        self.pool = (
            ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers else None
        )

    def __call__(
        self, acts: dict[str, Tensor], seq_ids: Tensor, tokens: Tensor, first: int, ctx: int, at_token
    ) -> None:
        for t in self.large:
            update_source(t, acts, seq_ids, tokens, first, ctx, at_token)
        with one_thread():
            if self.pool is None:
                for t in self.heads:
                    update_source(t, acts, seq_ids, tokens, first, ctx, at_token)
            else:
                run = functools.partial(
                    update_source,
                    acts=acts,
                    seq_ids=seq_ids,
                    tokens=tokens,
                    first=first,
                    ctx=ctx,
                    at_token=at_token,
                )
                for _ in self.pool.map(run, self.heads):  # raises what a thread raised
                    pass

    def __enter__(self) -> SourceUpdater:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class PhaseClock:
    """Wall time per phase of the pass (synchronising the GPU at phase ends, so times are real)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def measure(self, name: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self.phase(name):
            return fn(*args, **kwargs)


def stream(
    model: LoadedModel,
    dataset: Iterable | None,
    cfg: PrecomputeConfig,
    tracked: list[Tracked],
    hooks: list[str],
    first: int,
    writer: Appender,
    progress: bool,
    contexts: Contexts | None = None,
    batches: Iterator[Batch] | None = None,
) -> tuple[int, dict[str, float]]:
    """The one pass: run each batch once, update every source, append its sequences.

    ``batches`` (default: every window of the corpus) are the batches to read: a shard's, say.
    Returns the tokens read and the seconds spent in each phase (tokenize, forward, accumulate, write).
    """
    if batches is None:
        assert dataset is not None, "a pass reads the corpus's windows or the batches given"
        batches = pack_windows(
            dataset, model.tokenizer, cfg.ctx, cfg.batch_size, cfg.text_column, cfg.tokens, cfg.skip_tokens
        )
    total = (cfg.tokens // cfg.ctx) * cfg.ctx
    clock = PhaseClock(cfg.device)
    n_tokens = 0
    with (
        tqdm(total=total, unit="tok", unit_scale=True, desc="precompute", disable=not progress) as bar,
        SourceUpdater(tracked, cfg.device) as update,
    ):
        while (batch := clock.measure("tokenize", next, batches, None)) is not None:
            acts = clock.measure("forward", model.activations, batch.tokens, hooks)
            with clock.phase("accumulate"):
                at_token = {}
                tokens = batch.tokens.to(cfg.device, torch.int32)
                if contexts is not None:
                    context_hooks = dict.fromkeys(t.context_hook for t in tracked if t.context_hook)
                    at_token = {
                        h: {"rep": contexts.project(h, acts[h], first), "tok": tokens} for h in context_hooks
                    }
                update(acts, batch.seq_ids, tokens, first, cfg.ctx, at_token)
            with clock.phase("write"):
                writer.append(
                    "sequences",
                    {
                        "seq_id": batch.seq_ids.numpy(),
                        "doc_id": batch.doc_ids.numpy(),
                        "start": batch.starts.numpy(),
                        "token_ids": batch.tokens.numpy().astype(np.int32),
                    },
                )
            n_tokens += batch.tokens.numel()
            bar.update(batch.tokens.numel())
    return n_tokens, clock.seconds
