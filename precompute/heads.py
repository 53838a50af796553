"""Attention-head scores on synthetic probes: the one place that scores heads.

Every (layer, query head) gets five scores in [0, 1]:

- ``induction``, ``duplicate_token``, ``previous_token``, ``bos``: attention on repeated random token
  sequences, ``BOS, r_1..r_R, r_1..r_R`` (the R tokens distinct within a sequence, drawn from the
  ordinary vocabulary: no special or added tokens). For each query row the *target* keys come from
  TransformerLens's own detection patterns (``transformer_lens.head_detector``); a score is the
  attention on the targets, averaged over the query rows that have a target, then over sequences:
    - ``induction``: second-repeat token -> the token after its earlier occurrence;
    - ``duplicate_token``: second-repeat token -> its earlier occurrence;
    - ``previous_token``: every position after the first -> the position before it;
    - ``bos``: every position after the first -> position 0 (the sink; position 0 itself can only
      attend to itself and is left out).
- ``copying``: the OV circuit's copying score after Elhage et al.: over a set S of k tokens, the
  full OV circuit ``M = X_S W_V^h W_O^h W_U[:, S]`` (k x k; row: the token the head reads, column:
  the logit it writes), where ``X_S`` is the token's embedding as the head reads it (the layer's
  input norm applied to ``W_E[t]``, scale included: as if the residual stream were the bare
  embedding) and ``W_U`` has the final norm's scale folded in (its division by the residual's norm,
  a positive factor per position that depends on the whole stream, is left out). Biases are left
  out (they do not depend on the token). The score is ``sum_i max(Re l_i, 0) / sum_i |l_i|`` over
  M's eigenvalues: the share of positive eigenvalue mass (1: the head copies, 0: it never boosts
  what it reads; for real eigenvalues this is ``(1 + s) / 2`` with Elhage's ``s = sum l / sum |l|``;
  0 for a circuit that vanishes on S). M has rank <= d_head, so the eigenvalues are taken of the
  d_head x d_head ``(W_O^h W_U[:, S]) (X_S W_V^h)``, whose nonzero eigenvalues are M's.

Why not ``transformer_lens.head_detector.detect_head`` itself (it does run on TransformerBridge): it
takes strings and re-tokenizes them (random token ids do not survive a decode/encode round trip),
runs one sequence per call caching every hook, and its "mul" score divides by *all* query rows, so a
perfect induction head scores about 1/2 (the first repeat has no target). We use its detection
pattern functions, which take token ids, and average over the rows that have a target instead.

Models are reached through ``AttentionModel`` (patterns per layer, OV factors per head), so the same
code scores the real model (``BridgeAttention``) and the ground-truth toys
(``precompute.ground_truth.attention``). Torch inside, numpy out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.head_detector import (
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from precompute.pipeline.attention import pattern_hook

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from precompute.models import LoadedModel

METRICS = ("induction", "previous_token", "duplicate_token", "bos", "copying")
ATTENTION_METRICS = METRICS[:4]


class AttentionModel(Protocol):
    """What scoring needs from a model: attention patterns per layer, OV factors per query head."""

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int:
        """Query heads per layer (grouped-query models: more than key/value heads)."""
        ...

    @property
    def bos_token_id(self) -> int: ...

    def probe_token_ids(self) -> Int[Tensor, " n"]:
        """The ordinary tokens random probe sequences are drawn from (no special tokens)."""
        ...

    def copy_token_ids(self) -> Int[Tensor, " k"]:
        """The token set S the copying score restricts the OV circuit to."""
        ...

    def attention_patterns(
        self, tokens: Int[Tensor, "batch pos"], layers: Sequence[int]
    ) -> dict[int, Float[Tensor, "batch head q k"]]: ...

    def ov_factors(
        self, layer: int, token_ids: Int[Tensor, " k"]
    ) -> tuple[Float[Tensor, "head k d_head"], Float[Tensor, "head d_head k"]]:
        """(X_S W_V^h, W_O^h W_U[:, S]) per query head: their product is the full OV circuit on S."""
        ...


@dataclass(frozen=True)
class ProbeConfig:
    repeat_len: int = 50  # R: each sequence is BOS + R tokens + the same R tokens (TransformerLens's 50)
    n_sequences: int = 32
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeat_len < 3 or self.n_sequences < 1 or self.batch_size < 1:
            raise ValueError(f"bad probe config {self}: repeat_len >= 3, n_sequences, batch_size >= 1")


@dataclass(frozen=True)
class HeadScores:
    """metric -> float32 ``[len(layers), n_heads]``; row i is layer ``layers[i]``."""

    layers: tuple[int, ...]
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def top(self, metric: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads: (layer, head, score), best first."""
        values = self.scores[metric]
        order = np.argsort(-values, axis=None, kind="stable")[:k]
        rows, heads = np.unravel_index(order, values.shape)
        return [(self.layers[r], int(h), float(values[r, h])) for r, h in zip(rows, heads)]


def score_heads(
    model: AttentionModel, config: ProbeConfig | None = None, layers: Sequence[int] | None = None
) -> HeadScores:
    config = config or ProbeConfig()
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    scores = attention_scores(model, config, layers)
    scores["copying"] = copying_scores(model, layers)
    return HeadScores(layers=layers, scores=scores)


# --- attention on repeated random tokens ------------------------------------------------------


def repeated_random_tokens(model: AttentionModel, config: ProbeConfig) -> Int[Tensor, "n pos"]:
    """``n_sequences`` rows of BOS + R distinct ordinary tokens + the same R again, seeded."""
    vocab = model.probe_token_ids()
    if len(vocab) < config.repeat_len:
        raise ValueError(f"repeat_len {config.repeat_len} exceeds the {len(vocab)} ordinary tokens")
    generator = torch.Generator().manual_seed(config.seed)
    rows = []
    for _ in range(config.n_sequences):
        segment = vocab[torch.randperm(len(vocab), generator=generator)[: config.repeat_len]]
        rows.append(torch.cat([torch.tensor([model.bos_token_id]), segment, segment]))
    return torch.stack(rows).long()


def target_masks(tokens: Int[Tensor, " pos"]) -> dict[str, Float[Tensor, "q k"]]:
    """Each metric's target keys per query row, from TransformerLens's detection patterns."""
    row = tokens[None].cpu()
    bos = torch.zeros(len(tokens), len(tokens))
    bos[1:, 0] = 1
    return {
        "induction": get_induction_head_detection_pattern(row),
        "previous_token": get_previous_token_head_detection_pattern(row),
        "duplicate_token": get_duplicate_token_head_detection_pattern(row),
        "bos": bos,
    }


def target_attention(
    pattern: Float[Tensor, "batch head q k"], targets: Float[Tensor, "batch q k"]
) -> Float[Tensor, " head"]:
    """Attention on the targets, summed per query row, averaged over rows with a target: [head]."""
    per_row = torch.einsum("bhqk,bqk->bhq", pattern.float(), targets)
    has_target = (targets.sum(-1) > 0).float()  # [batch, q]
    return torch.einsum("bhq,bq->h", per_row, has_target) / has_target.sum()


@torch.inference_mode()
def attention_scores(
    model: AttentionModel, config: ProbeConfig, layers: tuple[int, ...]
) -> dict[str, np.ndarray]:
    tokens = repeated_random_tokens(model, config)
    masks = [target_masks(row) for row in tokens]
    sums = {m: torch.zeros(len(layers), model.n_heads, dtype=torch.float64) for m in ATTENTION_METRICS}
    for start in range(0, len(tokens), config.batch_size):
        batch = slice(start, start + config.batch_size)
        patterns = model.attention_patterns(tokens[batch], layers)
        weight = len(tokens[batch]) / len(tokens)  # every row has the same targets count per metric
        for metric in ATTENTION_METRICS:
            targets = torch.stack([m[metric] for m in masks[batch]])
            for i, layer in enumerate(layers):
                sums[metric][i] += weight * target_attention(patterns[layer].cpu(), targets).double()
    return {m: s.numpy().astype(np.float32) for m, s in sums.items()}


# --- copying: eigenvalues of the full OV circuit -----------------------------------------------


def copying_score(eigenvalues: Tensor) -> float:
    """Share of positive eigenvalue mass: sum max(Re l, 0) / sum |l| (0 when every l is 0)."""
    mass = eigenvalues.abs().sum().item()
    if mass <= 1e-12:
        return 0.0
    return eigenvalues.real.clamp(min=0).sum().item() / mass


def ov_eigenvalues(
    reads: Float[Tensor, "k d_head"], writes: Float[Tensor, "d_head k"]
) -> Float[Tensor, " d_head"]:
    """The nonzero eigenvalues of ``reads @ writes`` (k x k), as those of ``writes @ reads``."""
    return torch.linalg.eigvals(writes.double() @ reads.double())


@torch.inference_mode()
def copying_scores(model: AttentionModel, layers: tuple[int, ...]) -> np.ndarray:
    token_ids = model.copy_token_ids()
    out = np.zeros((len(layers), model.n_heads), dtype=np.float32)
    for i, layer in enumerate(layers):
        reads, writes = model.ov_factors(layer, token_ids)
        for head in range(model.n_heads):
            out[i, head] = copying_score(ov_eigenvalues(reads[head], writes[head]))
    return out


def ov_factors_from_weights(
    token_inputs: Float[Tensor, "k d_model"],
    W_V: Float[Tensor, "head d_model d_head"],
    W_O: Float[Tensor, "head d_head d_model"],
    unembed: Float[Tensor, "d_model k"],
) -> tuple[Float[Tensor, "head k d_head"], Float[Tensor, "head d_head k"]]:
    reads = torch.einsum("kd,hde->hke", token_inputs.float(), W_V.float())
    writes = torch.einsum("hed,dk->hek", W_O.float(), unembed.float())
    return reads, writes


def query_head_values(W_V: Float[Tensor, "kv_head d_model d_head"], n_heads: int) -> Tensor:
    """W_V per query head: grouped-query attention shares kv head ``h // (n_heads / n_kv)`` between
    consecutive query heads (Hugging Face's ``repeat_kv``; checked against ``hook_z`` in the tests)."""
    return W_V.repeat_interleave(n_heads // W_V.shape[0], dim=0)


# --- the real model: a TransformerBridge ---------------------------------------------------------


@dataclass(frozen=True)
class BridgeAttention:
    """``AttentionModel`` over a loaded TransformerBridge."""

    loaded: LoadedModel
    n_copy_tokens: int = 1000

    @property
    def bridge(self) -> TransformerBridge:
        return self.loaded.bridge

    @property
    def n_layers(self) -> int:
        return self.loaded.n_layers

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def bos_token_id(self) -> int:
        bos = self.loaded.bos_token_id
        if bos is None:
            raise ValueError(f"model {self.loaded.name} has no BOS token: the probes start with one")
        return bos

    def _special_ids(self) -> set[int]:
        tokenizer = self.loaded.tokenizer
        return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)

    def probe_token_ids(self) -> Tensor:
        vocab = min(self.loaded.d_vocab, len(self.loaded.tokenizer))
        special = self._special_ids()
        return torch.tensor([t for t in range(vocab) if t not in special])

    def copy_token_ids(self) -> Tensor:
        """The first ``n_copy_tokens`` BPE merges: ordinary tokens of two or more characters, lowest ids
        first (merge order follows pair frequency), so the single-byte alphabet is left out."""
        ids = self.probe_token_ids().tolist()
        pieces = self.loaded.tokenizer.convert_ids_to_tokens(ids)
        return torch.tensor([t for t, piece in zip(ids, pieces) if len(piece) >= 2][: self.n_copy_tokens])

    def attention_patterns(self, tokens: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
        cache = self.loaded.activations(tokens, [pattern_hook(layer) for layer in layers])
        return {layer: cache[pattern_hook(layer)] for layer in layers}

    @torch.inference_mode()
    def ov_factors(self, layer: int, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = token_ids.to(self.loaded.device)
        norm: Callable[[Tensor], Tensor] = self.bridge.blocks[layer].ln1
        token_inputs = norm(self.loaded.embedding_matrix()[ids])
        W_V = query_head_values(self._W_V[layer], self.n_heads)
        return ov_factors_from_weights(token_inputs, W_V, self._W_O[layer], self._unembed[:, ids])

    @torch.inference_mode()
    def ov_logit_diagonal(
        self, layer: int, unembed: Tensor, block: int = 1024
    ) -> Float[Tensor, "head d_vocab"]:
        """The OV circuit's direct logit effect on each token of what it reads: for every token t,
        ``X_t W_V^h W_O^h W_U[:, t]`` with ``X_t`` the token's embedding through the layer's input norm
        (as for ``copying``) and ``unembed`` W_U with the final norm's scale folded in: the logit the
        head adds to t when it attends to a position holding t, all of it on t. On the device, in
        blocks of tokens (small enough to stay in cache); the ``[head, d_vocab]`` result stays there."""
        norm: Callable[[Tensor], Tensor] = self.bridge.blocks[layer].ln1
        embed = self.loaded.embedding_matrix()
        W_V, W_O = self._W_V[layer].float(), self._W_O[layer].float()  # [kv_head, ...], [head, ...]
        n_kv, d_model, d_head = W_V.shape
        group = self.n_heads // n_kv  # grouped-query attention: each kv head's read serves `group` heads
        read_all = W_V.permute(1, 0, 2).reshape(d_model, n_kv * d_head)
        write_all = W_O.permute(2, 0, 1).reshape(d_model, self.n_heads * d_head)
        blocks = []
        for start in range(0, unembed.shape[1], block):
            stop = min(start + block, unembed.shape[1])
            reads = norm(embed[start:stop]).float() @ read_all  # [k, kv_head * d_head]
            writes = unembed[:, start:stop].float().T @ write_all  # [k, head * d_head]
            per_head = writes.view(-1, n_kv, group, d_head) * reads.view(-1, n_kv, 1, d_head)
            blocks.append(per_head.sum(-1).flatten(1))
        return torch.cat(blocks).T.contiguous()

    @cached_property
    def _unembed(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.loaded.unembed()  # W_U scaled: once, not once per layer

    @cached_property
    def _W_V(self) -> Float[Tensor, "layer kv_head d_model d_head"]:
        return self.bridge.W_V.detach().float()  # the bridge stacks every layer on each access

    @cached_property
    def _W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self.bridge.W_O.detach().float()
