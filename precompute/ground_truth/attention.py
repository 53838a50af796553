"""Attention-only transformers whose heads are known: the ground truth for ``precompute.heads``.

Both are TransformerLens ``HookedTransformer`` s (``attn_only=True``): their config takes hand-set
weights directly and runs on CPU in milliseconds, while TransformerBridge only wraps Hugging Face
architectures (which have MLPs and rotary positions, no place for a hand-built positional code). The
hook names (``blocks.L.attn.hook_pattern``) and weight shapes (``W_V``, ``W_O``...) are the bridge's,
so ``HookedAttention`` is a thin ``AttentionModel`` and the scoring code is the same.

- ``hand_built_model``: 2 layers x 3 heads with one-hot token and position codes and logits of
  +-``LOGIT`` (attention one-hot to ~1e-12): L0H0 attends to the previous token (and moves its
  identity to a "previous token" slot), L0H1 to BOS (OV: minus the identity, an anti-copier),
  L0H2 to the earlier occurrence of the same token (OV: the identity, a copier), L1H0 is an
  induction head (query: the token; key: the previous-token slot; OV: the identity); L1H1 and
  L1H2 are zero (uniform attention, zero OV circuit).
- ``train_induction_model``: 2 layers x 3 heads (LayerNorm, shortformer positions: positions enter
  Q and K only) trained, seeded, for 600 steps (10-40 s on the 2-core CPU) to predict the second
  repeat of random segments of varying length (so no fixed positional offset solves it: with a fixed
  length and positions in the stream, layer 0 learns to look back R - 1 places instead). It grows a
  previous-token head in layer 0 and an induction head in layer 1; which heads those are is not
  designed: the tests find them by ablation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from precompute.heads import ov_factors_from_weights, pattern_hook

BOS = 0
LOGIT = 30.0  # attention logit gap: e^-30 * n_ctx ~ 1e-12 leaks off the designed key

PREVIOUS, TO_BOS, DUPLICATE = 0, 1, 2  # layer-0 heads of the hand-built model
INDUCTION = 0  # layer-1 head of the hand-built model
MIN_SEGMENT = 3  # shortest repeated segment in training


@dataclass(frozen=True)
class HookedAttention:
    """``AttentionModel`` over an attention-only HookedTransformer whose token 0 is BOS."""

    model: HookedTransformer

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.model.cfg.n_heads

    @property
    def bos_token_id(self) -> int:
        return BOS

    def probe_token_ids(self) -> Tensor:
        return torch.arange(1, self.model.cfg.d_vocab)

    def copy_token_ids(self) -> Tensor:
        return self.probe_token_ids()

    @torch.inference_mode()
    def attention_patterns(self, tokens: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
        hooks = {pattern_hook(layer) for layer in layers}
        _, cache = self.model.run_with_cache(tokens, names_filter=lambda name: name in hooks)
        return {layer: cache[pattern_hook(layer)] for layer in layers}

    @torch.inference_mode()
    def ov_factors(self, layer: int, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        token_inputs = model.blocks[layer].ln1(model.W_E[token_ids])
        return ov_factors_from_weights(
            token_inputs, model.W_V[layer], model.W_O[layer], model.W_U[:, token_ids]
        )


# --- hand-built -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Residual stream: [token one-hot | position one-hot | previous token one-hot]."""

    d_vocab: int = 16
    n_ctx: int = 32

    @property
    def d_model(self) -> int:
        return 2 * self.d_vocab + self.n_ctx

    def token(self, t: int) -> int:
        return t

    def position(self, p: int) -> int:
        return self.d_vocab + p

    def previous(self, t: int) -> int:
        return self.d_vocab + self.n_ctx + t


def hand_built_model(layout: Layout | None = None) -> HookedTransformer:
    layout = layout or Layout()
    model = one_hot_model(layout, n_layers=2, n_heads=3, attn_only=True)
    with torch.no_grad():
        set_previous_token_head(model.blocks[0].attn, layout)
        _set_bos_head(model.blocks[0].attn, layout)
        _set_duplicate_head(model.blocks[0].attn, layout)
        _set_induction_head(model.blocks[1].attn, layout)
    return model.eval()


def one_hot_model(
    layout: Layout, n_layers: int, n_heads: int, d_mlp: int | None = None, attn_only: bool = False
) -> HookedTransformer:
    """A hand-built model's start: every weight zero but the one-hot token and position embeddings
    (and the unembedding) of ``layout``; heads of ``d_vocab + n_ctx`` dims (token dims, then position
    dims), no normalization, no attention scale; a ReLU MLP of ``d_mlp`` unless ``attn_only``."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=layout.d_model,
        d_head=layout.d_vocab + layout.n_ctx,
        d_mlp=d_mlp,
        d_vocab=layout.d_vocab,
        n_ctx=layout.n_ctx,
        act_fn="relu",
        attn_only=attn_only,
        normalization_type=None,
        positional_embedding_type="standard",
        use_attn_scale=False,
        seed=0,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _set_embeddings(model, layout)
    return model


def _set_embeddings(model: HookedTransformer, layout: Layout) -> None:
    for t in range(layout.d_vocab):
        model.embed.W_E[t, layout.token(t)] = 1
        model.unembed.W_U[layout.token(t), t] = 1
    for p in range(layout.n_ctx):
        model.pos_embed.W_pos[p, layout.position(p)] = 1


def set_previous_token_head(attn: torch.nn.Module, layout: Layout) -> None:
    """Query at p meets key at p - 1; OV moves the token into the previous-token slot."""
    h = PREVIOUS
    for p in range(layout.n_ctx - 1):
        attn.get_parameter("W_Q")[h, layout.position(p + 1), p] = LOGIT
        attn.get_parameter("W_K")[h, layout.position(p), p] = 1
    for t in range(layout.d_vocab):
        attn.get_parameter("W_V")[h, layout.token(t), t] = 1
        attn.get_parameter("W_O")[h, t, layout.previous(t)] = 1


def _set_bos_head(attn: torch.nn.Module, layout: Layout) -> None:
    """Every query meets position 0; OV writes minus the token read (an anti-copier)."""
    h = TO_BOS
    for p in range(layout.n_ctx):
        attn.get_parameter("W_Q")[h, layout.position(p), 0] = LOGIT
    attn.get_parameter("W_K")[h, layout.position(0), 0] = 1
    for t in range(layout.d_vocab):
        attn.get_parameter("W_V")[h, layout.token(t), t] = 1
        attn.get_parameter("W_O")[h, t, layout.token(t)] = -1


def _set_duplicate_head(attn: torch.nn.Module, layout: Layout) -> None:
    """Same token: +LOGIT; same position: -LOGIT (so not itself); OV copies the token."""
    h = DUPLICATE
    V = layout.d_vocab
    for t in range(V):
        attn.get_parameter("W_Q")[h, layout.token(t), t] = LOGIT
        attn.get_parameter("W_K")[h, layout.token(t), t] = 1
        attn.get_parameter("W_V")[h, layout.token(t), t] = 1
        attn.get_parameter("W_O")[h, t, layout.token(t)] = 1
    for p in range(layout.n_ctx):
        attn.get_parameter("W_Q")[h, layout.position(p), V + p] = -LOGIT
        attn.get_parameter("W_K")[h, layout.position(p), V + p] = 1


def _set_induction_head(attn: torch.nn.Module, layout: Layout) -> None:
    """Query: the current token; key: the previous-token slot; OV copies the token."""
    h = INDUCTION
    for t in range(layout.d_vocab):
        attn.get_parameter("W_Q")[h, layout.token(t), t] = LOGIT
        attn.get_parameter("W_K")[h, layout.previous(t), t] = 1
        attn.get_parameter("W_V")[h, layout.token(t), t] = 1
        attn.get_parameter("W_O")[h, t, layout.token(t)] = 1


# --- trained ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    d_vocab: int = 32
    repeat_len: int = 10
    d_model: int = 48
    n_heads: int = 3
    d_head: int = 16
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def repeated_segments(
    n: int, repeat_len: int, d_vocab: int, generator: torch.Generator
) -> Int[Tensor, "n pos"]:
    """BOS + a random segment (distinct tokens) + the same segment again."""
    segments = torch.stack(
        [torch.randperm(d_vocab - 1, generator=generator)[:repeat_len] + 1 for _ in range(n)]
    )
    return torch.cat([torch.full((n, 1), BOS), segments, segments], dim=1)


def training_batch(config: TrainConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows of BOS + a segment of random length in [MIN_SEGMENT, repeat_len] + the segment again +
    random filler, and the mask of the positions whose next token is predictable (within the second
    repeat). The varying length keeps a fixed positional offset from solving the task: only reading
    the token before the earlier occurrence (induction) does."""
    n, R = config.batch_size, config.repeat_len
    tokens = torch.randint(1, config.d_vocab, (n, 2 * R + 1), generator=generator)
    tokens[:, 0] = BOS
    predictable = torch.zeros(n, 2 * R, dtype=torch.bool)
    lengths = torch.randint(MIN_SEGMENT, R + 1, (n,), generator=generator).tolist()
    for row, length in enumerate(lengths):
        segment = torch.randperm(config.d_vocab - 1, generator=generator)[:length] + 1
        tokens[row, 1 : 2 * length + 1] = torch.cat([segment, segment])
        predictable[row, length + 1 : 2 * length] = True  # predicts tokens length+2 .. 2*length
    return tokens, predictable


def next_token_loss(model: HookedTransformer, tokens: Tensor, predictable: Tensor) -> Tensor:
    logits = model(tokens)[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return losses[predictable].mean()


def second_repeat_loss(model: HookedTransformer, tokens: Tensor, repeat_len: int) -> Tensor:
    """Mean loss on tokens 2..R of the second repeat of ``repeated_segments`` rows."""
    predictable = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    predictable[:, repeat_len + 1 : 2 * repeat_len] = True
    return next_token_loss(model, tokens, predictable)


def train_induction_model(config: TrainConfig | None = None) -> HookedTransformer:
    config = config or TrainConfig()
    with one_thread():  # tiny matrices: threads only spin, 20x slower on a busy 2-core machine
        return _train(config)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig) -> HookedTransformer:
    torch.manual_seed(config.seed)
    cfg = HookedTransformerConfig(
        n_layers=2,
        n_heads=config.n_heads,
        d_model=config.d_model,
        d_head=config.d_head,
        d_vocab=config.d_vocab,
        n_ctx=2 * config.repeat_len + 1,
        attn_only=True,
        normalization_type="LN",
        positional_embedding_type="shortformer",  # positions reach Q and K only, not the stream
        seed=config.seed,
    )
    model = HookedTransformer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        loss = next_token_loss(model, *training_batch(config, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
