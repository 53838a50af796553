"""Loading an SAE in SAELens's format: a local folder or a SAELens pretrained release.

An SAE reads one TransformerLens hook (``blocks.15.mlp.hook_post``) and writes ``d_sae`` features
per token. Two ways to name one (``load_sae``):

- a local folder in SAELens's format, ``cfg.json`` + ``sae_weights.safetensors``, of any
  architecture ``SAE.load_from_disk`` reads (standard, topk, jumprelu, gated, transcoders, ...);
- a SAELens pretrained release, ``release/sae_id`` (``gpt2-small-res-jb/blocks.8.hook_resid_pre``),
  where the Hugging Face hub is reachable or the SAE is in its cache.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from neurodash.errors import NeurodashError
from precompute.device import check_device
from precompute.hub import hub_reachable
from precompute.models import LoadedModel

if TYPE_CHECKING:  # imported where an SAE loads: importing SAELens takes seconds
    from sae_lens import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
METRICS_FILE = "metrics.json"
RELEASES_HINT = (
    "SAELens releases are listed by sae_lens.loading.pretrained_saes_directory."
    "get_pretrained_saes_directory() and at https://decoderesearch.github.io/SAELens/latest/pretrained_saes/"
)
# Hooks whose activations already live in the residual stream: a decoder row is a residual direction.
_RESIDUAL_HOOKS = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out"}


# --- loading --------------------------------------------------------------------------------


@dataclass
class LoadedSAE:
    """An SAE ready to encode activations of its hook."""

    name: str  # the folder's name, or ``release/sae_id``
    sae: SAE  # in eval mode

    @property
    def hook(self) -> str:
        """The TransformerLens hook it reads, e.g. ``blocks.15.mlp.hook_post``."""
        return self.sae.cfg.metadata.hook_name

    @property
    def d_in(self) -> int:
        return self.sae.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    @torch.inference_mode()
    def encode(self, acts: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_sae"]:
        """Feature activations of the hook's activations (as ``LoadedModel.activations`` returns them)."""
        return self.sae.encode(acts.to(self.sae.W_dec.device, self.sae.W_dec.dtype))

    def pre_activations(self, acts: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_sae"]:
        """The encoder's pre-activations (SAELens's ``hook_sae_acts_pre``), differentiable: where a
        feature is off (below its threshold, or out of the top k) its activation has no gradient,
        its pre-activation has one. Used to steer activation maximization."""
        kept: list[Tensor] = []

        def keep(tensor: Tensor, hook) -> Tensor:
            kept.append(tensor)
            return tensor

        point = self.sae.hook_sae_acts_pre
        point.add_hook(keep)
        try:
            self.sae.encode(acts.to(self.sae.W_dec.device, self.sae.W_dec.dtype))
        finally:
            point.remove_hooks()
        return kept[-1]

    @torch.inference_mode()
    def decode(self, feats: Float[Tensor, "batch pos d_sae"]) -> Float[Tensor, "batch pos d_in"]:
        return self.sae.decode(feats)

    def decoder_directions(self) -> Float[Tensor, "d_sae d_in"]:
        """Each feature's decoder row, in the hook's space.

        For logit effects and neighbours use ``residual_directions``: for an SAE on
        ``blocks.L.mlp.hook_post`` the residual-stream direction is ``W_dec @ W_out[L]``.
        """
        return self.sae.W_dec.detach().float()

    def residual_directions(self, model: LoadedModel) -> Float[Tensor, "d_sae d_model"]:
        """What each feature writes to the residual stream (as a neuron's row of W_out).

        ``blocks.L.mlp.hook_post``: ``W_dec @ W_out[L]``; hooks in the residual stream
        (``hook_resid_*``, ``hook_mlp_out``, ``hook_attn_out``): ``W_dec`` itself.
        """
        W_dec = self.decoder_directions()
        parts = self.hook.split(".")
        if parts[-2:] == ["mlp", "hook_post"] and parts[0] == "blocks" and parts[1].isdigit():
            return W_dec @ model.mlp_out_directions(int(parts[1])).to(W_dec.device)
        if parts[-1] in _RESIDUAL_HOOKS:
            return W_dec
        raise NeurodashError(
            f"SAE {self.name}: no residual-stream direction for features of hook {self.hook}"
        )

    def check_fits(self, model: LoadedModel) -> None:
        """Raise a clear error unless ``model`` has the hook and its width is ``d_in``."""
        model.check_hooks([self.hook])
        width = hook_width(model, self.hook)
        if width != self.d_in:
            raise NeurodashError(
                f"SAE {self.name} reads {self.d_in}-dimensional activations but {self.hook} of model "
                f"{model.name} has {width}: it was trained on another model or hook"
            )


def hook_width(model: LoadedModel, hook: str) -> int:
    """The width of ``hook``'s activations per token, from one short forward pass."""
    tokens = torch.tensor([model.tokenizer("a b")["input_ids"] or [0]])
    acts = model.activations(tokens, [hook])[hook]
    return math.prod(acts.shape[2:])


def load_sae(spec: str | Path, device: str = "cpu") -> LoadedSAE:
    """Load an SAE from a local folder in SAELens's format or a SAELens release ``release/sae_id``."""
    check_device(device)
    path = Path(spec).expanduser()
    if path.exists():
        sae, name = _load_folder(path, device), path.name
    elif path.is_absolute() or str(spec).startswith((".", "~")):
        raise NeurodashError(f"no SAE folder at {spec}: it does not exist")
    else:
        sae, name = _load_release(str(spec), device), str(spec)
    if not sae.cfg.metadata.hook_name:
        raise NeurodashError(f"SAE {name} does not say which hook it reads (no hook_name in its {CFG_FILE})")
    return LoadedSAE(name=name, sae=sae.eval())


def _load_folder(path: Path, device: str):
    cfg = path / CFG_FILE
    if not path.is_dir() or not cfg.is_file():
        raise NeurodashError(
            f"{path} is not an SAE folder in SAELens's format: it needs {CFG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        cfg_dict = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NeurodashError(f"{cfg} is not valid JSON: {_first_line(e)}") from None
    if not isinstance(cfg_dict, dict):
        raise NeurodashError(f"{cfg} is not a JSON object")
    from sae_lens.registry import SAE_CLASS_REGISTRY

    architecture = cfg_dict.get("architecture", "standard")  # SAELens < 6 wrote none: standard
    if architecture not in SAE_CLASS_REGISTRY:
        known = ", ".join(SAE_CLASS_REGISTRY)
        raise NeurodashError(f"{cfg}: unknown SAE architecture {architecture!r} (SAELens reads {known})")
    if not (path / WEIGHTS_FILE).is_file():
        raise NeurodashError(
            f"{path} has no {WEIGHTS_FILE}: an SAE folder needs {CFG_FILE} and {WEIGHTS_FILE}"
        )
    from sae_lens import SAE

    try:
        with quiet_sae_lens():
            return SAE.load_from_disk(path, device=device)
    except Exception as e:  # SAELens raises many types for a bad config or weights; all mean "cannot load"
        raise NeurodashError(f"cannot load the SAE in {path}: {_first_line(e)}") from None


def _load_release(spec: str, device: str):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, _, sae_id = spec.partition("/")
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NeurodashError(
            f"{spec!r} is neither an SAE folder nor a SAELens release: no release {release!r}{hint}. "
            f"An SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}; {RELEASES_HINT}"
        )
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise NeurodashError(
            f"SAELens release {release!r} has no SAE {sae_id!r}; name one as {release}/SAE_ID: {shown}"
        )
    online = hub_reachable()
    from sae_lens import SAE

    try:
        with quiet_sae_lens():
            return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # hub and conversion errors of many types
        why = (
            "it is not cached and the Hugging Face hub is not reachable from here"
            if not online
            else _first_line(e)
        )
        raise NeurodashError(
            f"cannot load SAE {spec!r}: {why}. Use a local SAE folder ({CFG_FILE} + {WEIGHTS_FILE}), "
            "for example one trained with `neurodash train-sae`"
        ) from None


def _first_line(e: Exception) -> str:
    """One line of ``e``: a heading that ends with a colon keeps the line after it."""
    if isinstance(e, KeyError):
        return f"missing key {e}"
    lines = [line.strip() for line in str(e).strip().splitlines()] or [type(e).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


@contextlib.contextmanager
def quiet_sae_lens():
    """SAELens logs and warns about our deliberate choices (override_model, a small dataset)."""
    sae_logger = logging.getLogger("sae_lens")
    level = sae_logger.level
    sae_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sae_logger.setLevel(level)
