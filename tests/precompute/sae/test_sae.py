"""Sparse autoencoders: recovery of known directions, training end to end, loading and its errors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_llama import save_untrained_sae, tiny_sae_config

from neurodash.errors import NeurodashError
from precompute.models import load_model
from precompute.sae import (
    SAEHyperparams,
    TrainSAEConfig,
    evaluate_sae,
    load_sae,
    train_on_activations,
    train_sae,
)

HOOK = "blocks.1.mlp.hook_post"  # the tiny Llama's last MLP: d_mlp 48
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def save_sae(folder: Path, architecture: str = "topk", d_in: int = 48, hook: str | None = HOOK) -> Path:
    """An untrained SAE of ``architecture`` (16 features) on the tiny Llama's last MLP."""
    return save_untrained_sae(folder, architecture, d_in=d_in, d_sae=16, hook=hook)


# --- ground truth: known sparse directions are recovered -------------------------------------


def sparse_activations(n_dirs: int = 64, d_in: int = 32, n_active: float = 3, seed: int = 0):
    """Unit directions in superposition (64 in 32 dimensions); each token a nonnegative
    combination of about ``n_active`` of them with magnitudes in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(n_dirs, d_in, generator=g), dim=1)

    def batches(batch_size: int):
        while True:
            active = torch.rand(batch_size, n_dirs, generator=g) < n_active / n_dirs
            magnitudes = torch.rand(batch_size, n_dirs, generator=g) + 0.5
            yield (active * magnitudes) @ dirs

    return dirs, batches


def test_recovers_known_sparse_directions():
    dirs, batches = sparse_activations()
    hp = SAEHyperparams(d_sae=128, k=4, batch_tokens=256, dead_after=5120)
    sae = train_on_activations(batches(hp.batch_tokens), d_in=32, tokens=100_000, hp=hp)
    decoder = F.normalize(sae.decoder_directions(), dim=1)
    best = (dirs @ decoder.T).max(dim=1).values  # each true direction's closest decoder row
    assert best.mean().item() >= 0.9, best
    assert (best > 0.8).float().mean().item() >= 0.9, best


# --- training end to end -------------------------------------------------------------------


def test_train_sae_writes_a_loadable_sae(trained_sae, tiny_model):
    folder = trained_sae.path
    assert {"cfg.json", "sae_weights.safetensors", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert not Path(f"{folder}.partial").exists()
    sae = load_sae(folder)
    assert (sae.hook, sae.d_in, sae.d_sae, sae.name) == (HOOK, 48, 96, "tiny-sae")
    sae.check_fits(tiny_model)

    tokens = torch.randint(0, 1000, (2, 16))
    acts = tiny_model.activations(tokens, [HOOK])[HOOK]
    feats = sae.encode(acts)
    assert feats.shape == (2, 16, 96)
    assert ((feats > 0).sum(-1) <= 8).all() and (feats >= 0).all()  # TopK, k = 8
    assert sae.decode(feats).shape == acts.shape


def test_train_sae_metrics_are_held_out_and_honest(trained_sae, tiny_model):
    m = trained_sae.metrics
    assert 0.0 < m.explained_variance <= 1.0
    assert 0 < m.l0 <= 8
    assert 0.0 <= m.dead_fraction < 1.0
    assert m.n_tokens == 16 * 63  # 16 held-out windows of 64, BOS left out
    assert json.loads((trained_sae.path / "metrics.json").read_text())["l0"] == pytest.approx(m.l0)

    # the same numbers, brute force, on one window
    sae = load_sae(trained_sae.path)
    window = torch.randint(0, 1000, (1, 64))
    window[0, 0] = tiny_model.bos_token_id
    x = tiny_model.activations(window, [HOOK])[HOOK][0, 1:]
    feats = sae.encode(x[None])[0]
    recon = sae.decode(feats)
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    got = evaluate_sae(sae, tiny_model, window)
    assert got.explained_variance == pytest.approx(ev.item(), abs=1e-4)
    assert got.l0 == pytest.approx((feats > 0).sum(-1).float().mean().item())
    assert got.dead_fraction == pytest.approx(1 - (feats > 0).any(0).float().mean().item())


def test_residual_directions_go_through_W_out(trained_sae, tiny_model):
    sae = load_sae(trained_sae.path)
    W_out = tiny_model.mlp_out_directions(1)  # [d_mlp, d_model]
    directions = sae.residual_directions(tiny_model)
    assert directions.shape == (96, 32)
    torch.testing.assert_close(directions, sae.decoder_directions() @ W_out)


def test_bf16_training_steps_train_as_well_as_fp32(tiny_model_dir, docs_jsonl, tmp_path):
    """``bf16_sae`` (on by default where the CPU has native bf16) autocasts the SAE's training steps
    only: the same seed reaches about the same held-out quality, and the weights stay fp32."""

    def trained(bf16: bool, run: int = 0):
        out = tmp_path / f"bf16-{bf16}-{run}"
        cfg = tiny_sae_config(out, tiny_model_dir, docs_jsonl, bf16_lm=False, bf16_sae=bf16)
        return train_sae(cfg, progress=False)

    fp32, bf16 = trained(False), trained(True)
    assert bf16.metrics.explained_variance > 0.2  # an untrained SAE explains nothing (~0 or below)
    assert bf16.metrics.explained_variance == pytest.approx(fp32.metrics.explained_variance, abs=0.05)
    weights = load_sae(bf16.path).decoder_directions()
    assert weights.dtype == torch.float32
    fp32_weights = load_sae(fp32.path).decoder_directions()
    assert torch.equal(
        fp32_weights, load_sae(trained(False, run=1).path).decoder_directions()
    )  # deterministic
    assert not torch.equal(weights, fp32_weights)  # so the steps did run in bf16


def test_existing_out_is_refused(trained_sae, tiny_model_dir, docs_jsonl):
    before = sorted(p.name for p in trained_sae.path.iterdir())
    with pytest.raises(NeurodashError, match="exists: pass --overwrite"):
        train_sae(
            TrainSAEConfig(
                out=trained_sae.path, hook=HOOK, model=str(tiny_model_dir), dataset=str(docs_jsonl)
            )
        )
    assert sorted(p.name for p in trained_sae.path.iterdir()) == before


# --- loading: every architecture, and clear errors ---------------------------------------------


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_loads_any_sae_lens_architecture(architecture, tmp_path, tiny_model):
    sae = load_sae(save_sae(tmp_path / architecture, architecture))
    sae.check_fits(tiny_model)
    acts = tiny_model.activations(torch.randint(0, 1000, (1, 8)), [HOOK])[HOOK]
    assert sae.encode(acts).shape == (1, 8, 16)
    assert sae.decoder_directions().shape == (16, 48)


def test_missing_cfg_json(tmp_path, trained_sae):
    folder = tmp_path / "sae"
    shutil.copytree(trained_sae.path, folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(NeurodashError, match="is not an SAE folder in SAELens's format: it needs cfg.json"):
        load_sae(folder)


def test_malformed_cfg_json(tmp_path, trained_sae):
    folder = tmp_path / "sae"
    shutil.copytree(trained_sae.path, folder)
    (folder / "cfg.json").write_text('{"d_in": 48,')
    with pytest.raises(NeurodashError, match=r"cfg.json is not valid JSON"):
        load_sae(folder)


def test_missing_weights(tmp_path):
    folder = save_sae(tmp_path / "sae")
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(NeurodashError, match="has no sae_weights.safetensors"):
        load_sae(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda cfg: cfg.pop("d_sae"), "cannot load the SAE in .*: .*d_sae"),
        (
            lambda cfg: cfg.update(architecture="no-such-arch"),
            "unknown SAE architecture 'no-such-arch' .*topk",
        ),
        (lambda cfg: cfg.update(d_in=40), "cannot load the SAE in .*size"),  # the weights are 48 wide
    ],
)
def test_config_sae_lens_rejects(tmp_path, edit, message):
    folder = save_sae(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(NeurodashError, match=message) as e:
        load_sae(folder)
    assert "\n" not in str(e.value)


def test_sae_without_a_hook(tmp_path):
    with pytest.raises(NeurodashError, match="does not say which hook it reads"):
        load_sae(save_sae(tmp_path / "sae", hook=None))


def test_wrong_d_in_for_the_hook(tmp_path, tiny_model):
    sae = load_sae(save_sae(tmp_path / "sae", d_in=40))
    with pytest.raises(
        NeurodashError, match=f"reads 40-dimensional activations but {HOOK} of model .* has 48"
    ):
        sae.check_fits(tiny_model)


def test_hook_the_model_lacks(tmp_path, tiny_model):
    sae = load_sae(save_sae(tmp_path / "sae", hook="blocks.7.mlp.hook_post"))
    with pytest.raises(NeurodashError, match="has no hook 'blocks.7.mlp.hook_post'"):
        sae.check_fits(tiny_model)


def test_missing_folder(tmp_path):
    with pytest.raises(NeurodashError, match="no SAE folder at"):
        load_sae(tmp_path / "no-such-sae")


def test_unknown_release():
    with pytest.raises(
        NeurodashError,
        match="neither an SAE folder nor a SAELens release: no release "
        "'gpt2-small-res-jbb' \\(did you mean gpt2-small-res-jb",
    ) as e:
        load_sae("gpt2-small-res-jbb/blocks.8.hook_resid_pre")
    assert "get_pretrained_saes_directory" in str(e.value)


def test_unknown_sae_id_in_a_release():
    with pytest.raises(
        NeurodashError,
        match="release 'gpt2-small-res-jb' has no SAE 'blocks.99.x'; name one as "
        "gpt2-small-res-jb/SAE_ID: blocks.0",
    ):
        load_sae("gpt2-small-res-jb/blocks.99.x")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No hub and an empty cache, whatever this machine's network."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr("precompute.sae.load.hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_release_offline(offline_hub):
    started = time.perf_counter()
    with pytest.raises(
        NeurodashError,
        match="cannot load SAE 'gpt2-small-res-jb/blocks.8.hook_resid_pre': it is "
        "not cached and the Hugging Face hub is not reachable from here",
    ):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert time.perf_counter() - started < 15  # at once: no network timeouts
