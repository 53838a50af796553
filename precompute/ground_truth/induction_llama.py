"""A Hugging Face Llama whose weights are set by hand to hold a known induction circuit: the circuit
lab's ground truth, loaded the way the lab loads any model (a local HF folder, through TransformerBridge).

2 layers x 4 heads, d_head 32, MLPs zero (their down projections are zero), a word-level tokenizer
(``<unk> <bos> <eos>`` then capital letters). The residual stream is laid out in slots of ``VOCAB``
dimensions (``Layout``): the token, the previous token, the output the unembedding reads, a scratch
slot for distractor heads, and one constant dimension. Every RMSNorm's scale is the residual stream's
designed RMS there, so a norm hands its input on unchanged when the stream is as designed.

- L0H1, the **previous-token head**: query and key are constant vectors in the three fastest rotary
  pairs, the key turned by one position's angle, so the score peaks one position back (by at least
  ``LOGIT`` over every other offset up to ``N_CTX``); OV moves the token into the previous-token slot.
- L1H2, the **induction head**: query the token, key the previous-token slot, both in the slowest rotary
  pairs (turning by < 0.1 rad over the context: content matching); a key at BOS scores half, so a query
  with no earlier occurrence rests on BOS; OV moves the matched position's token into the output slot.
  BOS's value is zero.
- Distractors, which must not show up as the circuit: L0H0 and L1H3 rest on BOS and write a constant
  into the scratch slot; L0H2 copies the current token into the scratch slot (half scale); L1H0 is a
  second previous-token head, in the wrong layer, copying into the scratch slot. L0H3 and L1H1 are zero.

So "A B C D A" predicts B (the induction head reads B at position 2, whose previous token is A); with
the first A changed ("E B C D A") nothing matches and B's logit is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

SPECIALS = ("<unk>", "<bos>", "<eos>")
WORDS = tuple("ABCDEFGHIJKLM")  # single capital letters; "X Y Z" are unknown
VOCAB = len(SPECIALS) + len(WORDS)  # 16
BOS, EOS = 1, 2
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 32
D_MODEL = N_HEADS * D_HEAD  # 128
N_CTX = 32
ROPE_THETA = 1e8  # rotary pair i turns by 10^(-i/2) rad per position (pairs 0..15 of d_head 32)
LOGIT = 40.0  # attention score margin of the designed key over every other
UNEMBED = 12.0  # the answer's logit when the induction head reads one token
PREVIOUS_TOKEN, INDUCTION = (0, 1), (1, 2)  # (layer, head)
BOS_SINKS, CURRENT_TOKEN, LATE_PREVIOUS = ((0, 0), (1, 3)), (0, 2), (1, 0)
_FAST_PAIRS = (0, 1, 2)  # the previous-token kernel: angles 1, 0.32, 0.1 rad per position
_SLOW_DIMS = tuple(range(5, 16)) + tuple(range(21, 32))  # pairs 5..15: < 3.2e-3 rad per position
_PAIR_MARGIN = 0.514  # min over offsets 0, 2..63 of sum_i (1 - cos((offset - 1) angle_i)), pairs 0-2


@dataclass(frozen=True)
class Layout:
    """Where each slot of the residual stream starts."""

    token: int = 0
    previous: int = VOCAB
    output: int = 2 * VOCAB
    scratch: int = 3 * VOCAB
    const: int = 4 * VOCAB


L = Layout()


def write_induction_llama(folder: Path) -> Path:
    """Build the model and its tokenizer and save both in ``folder`` (a few hundred KB)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(folder)
    model = _model()
    model.save_pretrained(folder)
    return folder


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    words = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<eos>"
    )


def _model() -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=8,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=1e-12,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _set_weights(model)
    return model.eval()


def _set_weights(model: LlamaForCausalLM) -> None:
    hf = model.model
    for t in range(VOCAB):
        hf.embed_tokens.weight[t, L.token + t] = 1
        hf.embed_tokens.weight[t, L.const] = 1
        model.lm_head.weight[t, L.output + t] = UNEMBED
    # The designed residual stream: token 1 + const 1 at layer 0; + previous token 1, a BOS-sink 1 and
    # the current-token copy 0.5 at layer 1; + the induction output 1, a second BOS-sink 1 and the late
    # previous-token copy 0.5 at the end (one-hot attention throughout).
    rms = [(2.0 / D_MODEL) ** 0.5, (4.25 / D_MODEL) ** 0.5, (6.5 / D_MODEL) ** 0.5]
    blocks = cast("list[LlamaDecoderLayer]", list(hf.layers))
    for layer, block in enumerate(blocks):
        block.input_layernorm.weight.fill_(rms[layer])
        block.post_attention_layernorm.weight.fill_(1.0)  # the MLPs are zero: any scale will do
    hf.norm.weight.fill_(rms[2])
    attn0, attn1 = blocks[0].self_attn, blocks[1].self_attn
    for sink in (attn0, 0), (attn1, 3):
        _bos_sink(*sink)
    _previous_token(attn0, 1, to=L.previous, scale=1.0)
    _current_token(attn0, 2)
    _previous_token(attn1, 0, to=L.scratch, scale=0.5)
    _induction(attn1, 2)


def _rows(head: int, dim: int) -> int:
    """The row of q/k/v_proj's weight (or column of o_proj's) for ``dim`` of ``head``."""
    return head * D_HEAD + dim


def _score_scale(margin: float, coefficient: float = 1.0) -> float:
    """q_i = k_i = this on each designed dimension gives a score margin of LOGIT (scores divide by
    sqrt(d_head))."""
    return (LOGIT * D_HEAD**0.5 / (margin * coefficient)) ** 0.5


def _fixed_offset(attn: LlamaAttention, head: int, offset: int) -> None:
    """Constant query and key in the fast rotary pairs, the key turned so scores peak ``offset`` back.
    HF's rotary pair i is (dim i, dim i + d_head/2), turned by position x angle_i."""
    s = _score_scale(_PAIR_MARGIN)
    half = D_HEAD // 2
    for i in _FAST_PAIRS:
        angle = offset * ROPE_THETA ** (-2 * i / D_HEAD)
        attn.q_proj.weight[_rows(head, i), L.const] = s
        attn.k_proj.weight[_rows(head, i), L.const] = s * torch.cos(torch.tensor(angle))
        attn.k_proj.weight[_rows(head, i + half), L.const] = s * torch.sin(torch.tensor(angle))


def _copy(attn: LlamaAttention, head: int, src: int, dst: int, scale: float, skip_bos: bool = False) -> None:
    """OV: the slot at ``src`` into the slot at ``dst``, times ``scale``."""
    for t in range(VOCAB):
        if skip_bos and t == BOS:
            continue
        attn.v_proj.weight[_rows(head, t), src + t] = 1
        attn.o_proj.weight[dst + t, _rows(head, t)] = scale


def _previous_token(attn: LlamaAttention, head: int, to: int, scale: float) -> None:
    _fixed_offset(attn, head, 1)
    _copy(attn, head, L.token, to, scale)


def _current_token(attn: LlamaAttention, head: int) -> None:
    _fixed_offset(attn, head, 0)
    _copy(attn, head, L.token, L.scratch, 0.5)


def _bos_sink(attn: LlamaAttention, head: int) -> None:
    """Every query meets BOS (content, in a slow pair); OV writes 1 into the scratch slot's BOS row."""
    s = _score_scale(1.0)
    dim = _SLOW_DIMS[0]
    attn.q_proj.weight[_rows(head, dim), L.const] = s
    attn.k_proj.weight[_rows(head, dim), L.token + BOS] = s
    attn.v_proj.weight[_rows(head, 0), L.const] = 1
    attn.o_proj.weight[L.scratch + BOS, _rows(head, 0)] = 1


def _induction(attn: LlamaAttention, head: int) -> None:
    """Query token t meets a key whose previous-token slot holds t (score LOGIT); a key at BOS scores
    LOGIT / 2; OV copies the key's token (not BOS) into the output slot."""
    s = _score_scale(1.0)
    for t in range(VOCAB):
        dim = _SLOW_DIMS[t]
        attn.q_proj.weight[_rows(head, dim), L.token + t] = s
        attn.k_proj.weight[_rows(head, dim), L.previous + t] = s
    bos_dim = _SLOW_DIMS[VOCAB]
    attn.q_proj.weight[_rows(head, bos_dim), L.const] = s / 2**0.5
    attn.k_proj.weight[_rows(head, bos_dim), L.token + BOS] = s / 2**0.5
    _copy(attn, head, L.token, L.output, 1.0, skip_bos=True)
