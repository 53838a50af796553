"""``precompute.models``: reading activations from a tiny Llama through TransformerBridge."""

from __future__ import annotations

import pytest
import torch

from precompute.models import load_model, mlp_hook, mlp_input_hook


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.mark.parametrize("last_layer", ["middle", "final"])
def test_activations_equal_a_full_run_and_skip_what_follows(tiny_model, last_layer):
    """The cached hooks equal a full forward pass's; the blocks after the last layer asked for, and
    the unembedding, never run."""
    layer = tiny_model.n_layers - (2 if last_layer == "middle" else 1)
    hooks = [mlp_input_hook(0), mlp_hook(layer)]
    tokens = torch.randint(0, 1000, (2, 12))
    fired: list[str] = []
    after = [f"blocks.{i}.hook_out" for i in range(layer + 1, tiny_model.n_layers)] + ["unembed.hook_in"]
    with (
        torch.inference_mode(),
        tiny_model.bridge.hooks(fwd_hooks=[(h, lambda t, hook: fired.append(hook.name)) for h in after]),
    ):
        kept = tiny_model.activations(tokens, hooks)
    assert fired == []
    with torch.inference_mode():
        _, full = tiny_model.bridge.run_with_cache(tokens, names_filter=lambda name: name in hooks)
    for hook in hooks:
        torch.testing.assert_close(kept[hook], full[hook], rtol=0, atol=0)


def test_a_gguf_file_is_parsed_once_in_memory_with_the_same_fields_and_tensors(tmp_path):
    """The embedded model's dequantization: transformers' repeated reads of one GGUF file share one
    in-memory parse, equal to gguf's own, and gguf's reader is restored after."""
    import gguf
    import numpy as np

    from precompute.models import _gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    original = gguf.GGUFReader
    expected = original(path)
    with _gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
    assert first is again
    assert gguf.GGUFReader is original
    assert not isinstance(first.data, np.memmap)
    assert list(first.fields) == list(expected.fields)
    assert first.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "a", "b"]
    assert [t.name for t in first.tensors] == ["w"]
    assert np.array_equal(first.tensors[0].data, expected.tensors[0].data)


def test_token_strings_equal_batch_decode(tiny_model):
    ids = range(len(tiny_model.tokenizer))
    assert tiny_model.token_strings(ids) == tiny_model.tokenizer.batch_decode([[i] for i in ids])
