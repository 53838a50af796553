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


# --- the tiny pipeline store (conftest's tiny_pipeline_store) ----------------------------------
# Both MLP layers and an untrained TopK SAE on the last one, over a few windows of python-docs:
# what the pipeline's ground-truth tests compare with activations read straight from HF.
STORE_CTX, STORE_TOKENS, STORE_BATCH, STORE_CONTEXT_DIMS = 32, 1536, 5, 32
STORE_N_LOGITS, STORE_N_NEIGHBORS = 5, 3
STORE_EXAMPLES = dict(top_k=6, bottom_k=3, quantile_groups=3, per_group=3, window=10, window_before=6)
SAE_HOOK = "blocks.1.mlp.hook_post"  # the last MLP: d_mlp 48
SAE_WIDTH, SAE_K = 24, 4


def examples_config():
    """The store's AccumulatorConfig (imported here, not at module level: it needs torch)."""
    from precompute.pipeline.accumulate import AccumulatorConfig

    return AccumulatorConfig(**STORE_EXAMPLES)


def save_untrained_sae(
    folder: Path,
    architecture: str = "topk",
    d_in: int = D_MLP,
    d_sae: int = SAE_WIDTH,
    k: int = SAE_K,
    hook: str | None = SAE_HOOK,
    seed: int = 1,
) -> Path:
    """An SAE with random weights of ``architecture``, saved by SAELens itself."""
    import torch
    from sae_lens import SAE

    torch.manual_seed(seed)
    metadata = {"hook_name": hook} if hook else {}
    sae = SAE.from_dict(
        {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "k": k, "metadata": metadata}
    )
    sae.save_model(folder)
    return folder


def tiny_sae_config(out: Path, model_dir: Path, dataset: Path, **overrides):
    """The tests' ``train_sae`` settings: a TopK SAE (96 features, k 8) on ``SAE_HOOK`` over 4096
    tokens in windows of 64, its metrics on 1024 held-out tokens; ``overrides`` replace fields."""
    from precompute.sae import SAEHyperparams, TrainSAEConfig

    settings = dict(
        out=out,
        hook=SAE_HOOK,
        model=str(model_dir),
        dataset=str(dataset),
        tokens=4096,
        ctx=64,
        batch_size=8,
        eval_tokens=1024,
        sae=SAEHyperparams(d_sae=96, k=8, batch_tokens=256),
    )
    return TrainSAEConfig(**(settings | overrides))


def write_pipeline_store(
    out: Path, model_dir: Path, dataset: Path, sae: Path, dtype: str = "float32"
) -> Path:
    from precompute import PrecomputeConfig, run_precompute

    cfg = PrecomputeConfig(
        out=out,
        model=str(model_dir),
        dataset=str(dataset),
        layers=(0, 1),
        tokens=STORE_TOKENS,
        ctx=STORE_CTX,
        batch_size=STORE_BATCH,
        n_logits=STORE_N_LOGITS,
        n_neighbors=STORE_N_NEIGHBORS,
        examples=examples_config(),
        context_dims=STORE_CONTEXT_DIMS,
        saes=(str(sae),),
        dtype=dtype,
    )
    return run_precompute(cfg, progress=False)


# --- reading the tiny stores -----------------------------------------------------------------
def strongest_unit(store_path: Path, source_id: str) -> str:
    """The unit of ``source_id`` with the highest max activation, as ``source/index``."""
    from neurodash.storage import Store

    with Store(store_path) as store:
        units = store.units_frame(source_id)
    return f"{source_id}/{int(units.loc[units['max_act'].idxmax(), 'unit'])}"
