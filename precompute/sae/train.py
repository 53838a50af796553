"""Training an SAE with SAELens's trainer, and measuring it on held-out tokens.

``train_sae`` trains one with SAELens's ``LanguageModelSAETrainingRunner``, offline: the model is
our TransformerBridge (``override_model``), the data our corpus packed into windows exactly as
the precompute pass packs it (``override_dataset``, pre-tokenized, BOS positions excluded).

Architecture: TopK (SAELens's ``TopKTrainingSAE``): each token keeps its ``k`` strongest features,
so L0 is fixed by construction and there is no sparsity coefficient to tune; its AuxK loss feeds
features that stopped firing. It learns in the hundred or so optimiser steps a CPU budget allows
(layer 15 of smollm2-135m, 200k tokens, about 2.5 minutes: explained variance 0.62 at L0 32), where
a ReLU + L1 SAE needs its L1 coefficient swept and more steps to settle.

The settings (``TrainSAEConfig``, ``SAEHyperparams``) live in ``neurodash.config``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from neurodash.config import SAEHyperparams, TrainSAEConfig
from neurodash.errors import NeurodashError
from precompute.corpus import load_corpus, pack_windows
from precompute.device import check_device
from precompute.models import LoadedModel, load_model
from precompute.sae.load import METRICS_FILE, LoadedSAE, hook_width, load_sae, quiet_sae_lens

# SAELens shuffles activations in a buffer of this many optimiser batches (keeping half for the next
# fill): a window's tokens are alike, so a batch should mix many windows.
MIX_BATCHES = 16


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
    check_device(cfg.device)
    dataset = load_corpus(cfg.dataset, cfg.split, cfg.text_column)
    model = load_model(cfg.model, cfg.device)
    model.check_ctx(cfg.ctx)
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
        autocast_lm=_bf16(cfg.bf16_lm, cfg.device),
        autocast=_bf16(cfg.bf16_sae, cfg.device),
        output_path=str(out),
    )
    torch.manual_seed(cfg.sae.seed)
    with (
        quiet_sae_lens(),
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


def _bf16(setting: bool | None, device: str) -> bool:
    """bf16 autocast (the model's forward pass, the SAE's training steps) as ``setting`` says; by
    default on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX): markedly faster there;
    elsewhere bf16 is emulated and slower. The held-out metrics are computed in fp32 all the same."""
    if setting is not None:
        return setting
    if device.startswith("cuda"):
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
    with quiet_sae_lens(), _trainer_bar_off():
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
