"""Sparse autoencoders: load them in SAELens's format, train them with SAELens's trainer.

An SAE reads one TransformerLens hook (``blocks.15.mlp.hook_post``) and writes ``d_sae`` features
per token. Two ways to name one (``load_sae``):

- a local folder in SAELens's format, ``cfg.json`` + ``sae_weights.safetensors``, of any
  architecture ``SAE.load_from_disk`` reads (standard, topk, jumprelu, gated, transcoders, ...);
- a SAELens pretrained release, ``release/sae_id`` (``gpt2-small-res-jb/blocks.8.hook_resid_pre``),
  where the Hugging Face hub is reachable or the SAE is in its cache.

``train_sae`` trains one with SAELens's ``LanguageModelSAETrainingRunner``, offline: the model is
our TransformerBridge (``override_model``), the data our corpus packed into windows exactly as
the precompute pass packs it (``override_dataset``, pre-tokenized, BOS positions excluded).

Architecture: TopK (SAELens's ``TopKTrainingSAE``): each token keeps its ``k`` strongest features,
so L0 is fixed by construction and there is no sparsity coefficient to tune; its AuxK loss feeds
features that stopped firing. It learns in the hundred or so optimiser steps a CPU budget allows
(layer 15 of smollm2-135m, 200k tokens, about 2.5 minutes: explained variance 0.62 at L0 32), where
a ReLU + L1 SAE needs its L1 coefficient swept and more steps to settle.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.errors import NeurodashError
from precompute.corpus import DEFAULT_DATASET, load_corpus, pack_windows
from precompute.hub import hub_reachable
from precompute.models import DEFAULT_MODEL, LoadedModel, load_model

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
METRICS_FILE = "metrics.json"
# SAELens shuffles activations in a buffer of this many optimiser batches (keeping half for the next
# fill): a window's tokens are alike, so a batch should mix many windows.
MIX_BATCHES = 16
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
    sae: Any  # sae_lens.SAE, in eval mode

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
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NeurodashError(f"--device {device}: no CUDA device is available here")
    path = Path(spec).expanduser()
    if path.exists():
        sae, name = _load_folder(path, device), path.name
    elif path.is_absolute() or str(spec).startswith((".", "~")):
        raise NeurodashError(f"no SAE folder at {spec}")
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
        with _quiet_sae_lens():
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
        with _quiet_sae_lens():
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
def _quiet_sae_lens():
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


# --- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEHyperparams:
    """The SAE and its optimiser. The defaults train a useful SAE in minutes on a laptop CPU."""

    d_sae: int = 4096
    k: int = 32  # features kept per token (TopK)
    lr: float = 3e-3  # Adam; constant, then linear decay to 0 over the last third of the steps
    batch_tokens: int = 2048  # tokens per optimiser step
    dead_after: int = 50_000  # tokens without firing before a feature counts as dead (gets AuxK loss)
    seed: int = 0

    def __post_init__(self):
        for name in ("d_sae", "k", "batch_tokens", "dead_after"):
            if getattr(self, name) < 1:
                raise NeurodashError(f"--{name.replace('_', '-')} must be at least 1")
        if self.k > self.d_sae:
            raise NeurodashError(f"--k {self.k} is more than --d-sae {self.d_sae}")
        if not self.lr > 0:
            raise NeurodashError("--lr must be positive")


@dataclass(frozen=True)
class TrainSAEConfig:
    out: str | Path  # the SAE folder to write
    hook: str  # e.g. blocks.15.mlp.hook_post
    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    split: str = "train"
    text_column: str = "text"
    tokens: int = 200_000  # training tokens (activations the SAE sees)
    ctx: int = 128
    batch_size: int = 16  # windows per forward pass of the model
    eval_tokens: int = 8192  # held-out tokens for the final metrics
    device: str = "cpu"
    bf16_lm: bool | None = None  # bf16 autocast for the model's forward pass; None: where the hardware has it
    overwrite: bool = False
    sae: SAEHyperparams = field(default_factory=SAEHyperparams)

    def __post_init__(self):
        for name in ("tokens", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise NeurodashError(f"--{name.replace('_', '-')} must be at least 1")
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
class SAEMetrics:
    """Held-out quality: explained variance (1 - SSE / total variance about the mean), mean L0,
    and the fraction of features that never fired on the held-out tokens."""

    explained_variance: float
    l0: float
    dead_fraction: float
    n_tokens: int

    def summary(self) -> str:
        return (
            f"explained variance {self.explained_variance:.3f}, L0 {self.l0:.1f}, "
            f"dead features {self.dead_fraction:.1%} (over {self.n_tokens:,} held-out tokens)"
        )


@dataclass(frozen=True)
class TrainResult:
    path: Path
    metrics: SAEMetrics
    train_tokens: int  # activations the SAE trained on (whole batches)
    distinct_tokens: int  # distinct corpus tokens among them (fewer: the corpus was repeated)
    seconds: float


def train_sae(cfg: TrainSAEConfig, progress: bool = True) -> TrainResult:
    """Train a TopK SAE on ``cfg.hook`` of ``cfg.model`` and save it in SAELens's format to ``cfg.out``.

    Writes ``<out>.partial`` and renames it when done; the folder also holds ``metrics.json``,
    the held-out metrics computed here from fresh fp32 activations.
    """
    started = time.perf_counter()
    out = Path(cfg.out).expanduser()
    _check_out(out, cfg.overwrite)
    dataset = load_corpus(cfg.dataset, cfg.split, cfg.text_column)
    model = load_model(cfg.model, cfg.device)
    model.check_hooks([cfg.hook])
    d_in = hook_width(model, cfg.hook)
    per_window = cfg.ctx - (model.bos_token_id is not None)  # BOS positions are left out
    train, held_out = _windows(dataset, model, cfg, per_window)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _run_sae_lens(model, cfg, d_in, train, partial, progress)
        sae = load_sae(partial, cfg.device)
        metrics = evaluate_sae(sae, model, held_out, cfg.batch_size)
        (partial / METRICS_FILE).write_text(json.dumps(asdict(metrics), indent=1))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    n_tokens = cfg.steps * cfg.sae.batch_tokens
    distinct = min(n_tokens, len(train) * per_window)
    return TrainResult(out, metrics, n_tokens, distinct, time.perf_counter() - started)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise NeurodashError(f"{out} exists: pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise NeurodashError(f"{out} is a file, not an SAE folder")
    if not out.parent.is_dir():
        raise NeurodashError(f"cannot write {out}: folder {out.parent} does not exist")


def _windows(
    dataset, model: LoadedModel, cfg: TrainSAEConfig, per_window: int
) -> tuple[list[list[int]], Tensor]:
    """Training windows (the tokens to train on, and the slack SAELens's mixing buffer holds back)
    and held-out windows after them; a short corpus gives what it has, at least one window each."""
    n_eval = math.ceil(cfg.eval_tokens / cfg.ctx)
    slack = math.ceil((MIX_BATCHES / 2 + 1) * cfg.sae.batch_tokens / per_window) + cfg.batch_size
    n_train = math.ceil(cfg.steps * cfg.sae.batch_tokens / per_window) + slack
    batches = pack_windows(
        dataset, model.tokenizer, cfg.ctx, 256, cfg.text_column, (n_train + n_eval) * cfg.ctx
    )
    windows = torch.cat([b.tokens for b in batches])
    if len(windows) < 2:
        raise NeurodashError(
            f"the corpus holds only one window of --ctx {cfg.ctx} tokens: too short to train on"
        )
    n_eval = min(n_eval, max(1, len(windows) // 5))
    return windows[:-n_eval].tolist(), windows[-n_eval:]


def _run_sae_lens(
    model: LoadedModel, cfg: TrainSAEConfig, d_in: int, windows: list[list[int]], out: Path, progress: bool
) -> None:
    """SAELens's LanguageModelSAETrainingRunner on our bridge and windows, saving to ``out``."""
    import datasets

    bos = model.bos_token_id
    runner_cfg = _runner_config(
        cfg.sae,
        d_in,
        cfg.steps * cfg.sae.batch_tokens,
        cfg.device,
        model_name=cfg.model,
        model_class_name="TransformerBridge",
        hook_name=cfg.hook,
        dataset_path=cfg.dataset,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.ctx,
        prepend_bos=bos is not None,
        sequence_separator_token="bos" if model.tokenizer.eos_token_id is None else "eos",
        store_batch_size_prompts=cfg.batch_size,
        n_batches_in_buffer=math.ceil(MIX_BATCHES * cfg.sae.batch_tokens / cfg.ctx),  # its unit: ctx tokens
        exclude_special_tokens=[bos] if bos is not None else False,
        autocast_lm=_bf16_lm(cfg),
        output_path=str(out),
    )
    torch.manual_seed(cfg.sae.seed)
    with (
        _quiet_sae_lens(),
        tqdm(
            total=cfg.steps * cfg.sae.batch_tokens,
            unit="tok",
            unit_scale=True,
            desc="train-sae",
            disable=not progress,
        ) as bar,
    ):
        dataset = datasets.Dataset.from_dict({"tokens": windows})
        _runner_class()(runner_cfg, override_dataset=dataset, override_model=model.bridge, bar=bar).run()


def _bf16_lm(cfg: TrainSAEConfig) -> bool:
    """bf16 for the model's forward pass on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX):
    several times faster there; elsewhere bf16 is emulated and slower."""
    if cfg.bf16_lm is not None:
        return cfg.bf16_lm
    if cfg.device.startswith("cuda"):
        return True
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _runner_config(hp: SAEHyperparams, d_in: int, tokens: int, device: str, **lm):
    """SAELens's runner config: TopK SAE, no wandb, no checkpoints, no hub."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    steps = max(1, tokens // hp.batch_tokens)
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=hp.d_sae, k=hp.k, device=device),
        training_tokens=tokens,
        train_batch_size_tokens=hp.batch_tokens,
        lr=hp.lr,
        lr_decay_steps=steps // 3,
        dead_feature_window=max(1, hp.dead_after // hp.batch_tokens),
        feature_sampling_window=steps + 1,
        device=device,
        seed=hp.seed,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        model_from_pretrained_kwargs={},
        verbose=False,
        **lm,
    )


@functools.cache
def _runner_class():
    from sae_lens import LanguageModelSAETrainingRunner

    class Runner(LanguageModelSAETrainingRunner):
        """The runner minus its signal handlers (Ctrl-C and SIGTERM stay the caller's), with our
        progress bar counting tokens."""

        def __init__(self, *args, bar: tqdm, **kwargs):
            super().__init__(*args, **kwargs)
            self.bar = bar

        def run_trainer_with_interruption_handling(self, trainer):
            trainer.data_provider = _Counted(trainer.data_provider, self.bar)
            with _trainer_bar_off():
                return trainer.fit()

    return Runner


class _Counted:
    """An activation iterator that advances a progress bar by each batch's tokens."""

    def __init__(self, batches: Iterator[Tensor], bar: tqdm):
        self.batches, self.bar = batches, bar

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        batch = next(self.batches)
        self.bar.update(batch.shape[0])
        return batch


@contextlib.contextmanager
def _trainer_bar_off():
    """SAETrainer's own tqdm bar moves once per 100 steps: too coarse for runs of about a hundred."""
    from sae_lens.training import sae_trainer

    original = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        sae_trainer.tqdm = original


def train_on_activations(
    batches: Iterator[Tensor], d_in: int, tokens: int, hp: SAEHyperparams, device: str = "cpu"
) -> LoadedSAE:
    """Train the same TopK SAE as ``train_sae`` with SAELens's SAETrainer on any activation batches
    ([batch_tokens, d_in] each), e.g. cached or synthetic activations."""
    from sae_lens import TrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = _runner_config(hp, d_in, tokens, device, dataset_path="activations")
    torch.manual_seed(hp.seed)
    sae = TrainingSAE.from_dict(cfg.get_training_sae_cfg_dict())
    with _quiet_sae_lens(), _trainer_bar_off():
        SAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=iter(batches)).fit()
    return LoadedSAE(name="activations", sae=sae.eval())


@torch.inference_mode()
def evaluate_sae(sae: LoadedSAE, model: LoadedModel, windows: Tensor, batch_size: int = 16) -> SAEMetrics:
    """Explained variance, L0 and dead fraction of ``sae`` on ``windows`` (BOS positions left out)."""
    first = 0 if model.bos_token_id is None else 1
    sse = sum_x2 = l0 = 0.0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    n = 0
    for tokens in windows.split(batch_size):
        acts = model.activations(tokens, [sae.hook])[sae.hook][:, first:].float()
        x = acts.reshape(-1, sae.d_in).double()
        feats = sae.encode(acts)
        recon = sae.decode(feats).reshape(-1, sae.d_in).double().to(x.device)
        active = feats.reshape(-1, sae.d_sae) > 0
        sse += (x - recon).pow(2).sum().item()
        sum_x += x.sum(0).cpu()
        sum_x2 += x.pow(2).sum().item()
        l0 += active.sum().item()
        fired |= active.any(0).cpu()
        n += x.shape[0]
    total_var = sum_x2 - (sum_x.pow(2).sum() / n).item()
    return SAEMetrics(
        explained_variance=1 - sse / total_var,
        l0=l0 / n,
        dead_fraction=1 - fired.float().mean().item(),
        n_tokens=n,
    )
