"""A tiny Llama and its tokenizer, built offline in a few seconds: the fast tier's model.

The tokenizer is a byte-level BPE trained on the first documents of the embedded python-docs
corpus, with the special tokens where SmolLM2 has them (``<|endoftext|>`` 0 as unk,
``<|im_start|>`` 1 as BOS, ``<|im_end|>`` 2 as EOS and pad), so the tiny model never needs the
real one. The model keeps what the real one exercises: grouped-query attention (4 query heads
over 2 key-value heads), RMS norms with a visible final-norm scale (folded into W_U), SwiGLU MLPs.
"""

from __future__ import annotations

import itertools
from pathlib import Path

UNK, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 2048
TRAINING_DOCS = 120
D_MODEL, D_MLP, N_LAYERS, N_HEADS, N_KV_HEADS = 32, 48, 2, 4, 2


def write_tokenizer(folder: Path) -> Path:
    """Train the byte-level BPE and save it as a transformers fast tokenizer in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from precompute.corpus import python_docs

    texts = [doc["text"] for doc in itertools.islice(python_docs(), TRAINING_DOCS)]
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no text is ever unknown
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS
    )
    tokenizer.save_pretrained(folder)
    return folder


def write_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights, sized to the tokenizer saved in ``folder``, saved beside it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a visible final-norm scale, so folding it into W_U is tested
        model.model.norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder
