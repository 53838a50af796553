"""A one-layer transformer with neurons planted on known triggers: the ground truth for the explainers.

A TransformerLens ``HookedTransformer`` with hand-set weights (as ``attention.hand_built_model``):
one-hot token and position codes, a previous-token head (L0H0) that writes the previous token into
its own slot of the residual stream, then a ReLU MLP whose neurons read the current token and that
slot:

- ``AFTER`` (neuron 0) fires (1.0) on token ``B`` right after token ``A``, and only there;
- ``ALONE`` (neuron 1) fires (1.0) on token ``C`` in any context;
- ``EITHER`` (neuron 2) fires (1.0) on ``E`` and on ``F``, in any context (two triggers);
- the other neurons never fire.

``planted_texts`` reads a unit the way a store keeps it: its strongest windows over a random corpus
are shown to the explainer, and held-out sequences of the same corpus (never shown) score it.
``PlantedReader`` reads the neurons for the model steps (``precompute.n2g``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from neurodash.explain import MAX_DISTANCE, UnitTexts, Window
from neurodash.units import UnitRef
from precompute.ground_truth.attention import BOS, Layout, one_hot_model, set_previous_token_head

A, B, C, D, E, F = 1, 2, 3, 4, 5, 6  # D is planted in no neuron: the neutral token of the model steps
AFTER, ALONE, EITHER = 0, 1, 2
D_MLP = 4
HOOK = "blocks.0.mlp.hook_post"
SOURCE = "L0.mlp"


def planted_model(layout: Layout | None = None) -> HookedTransformer:
    layout = layout or Layout()
    model = one_hot_model(layout, n_layers=1, n_heads=1, d_mlp=D_MLP)
    with torch.no_grad():
        set_previous_token_head(model.blocks[0].attn, layout)
        _plant_neurons(model.blocks[0].mlp, layout)
    return model.eval()


def _plant_neurons(mlp: torch.nn.Module, layout: Layout) -> None:
    w, b = mlp.get_parameter("W_in"), mlp.get_parameter("b_in")
    w[layout.token(B), AFTER] = w[layout.previous(A), AFTER] = 1
    b[AFTER] = -1
    w[layout.token(C), ALONE] = 1
    w[layout.token(E), EITHER] = w[layout.token(F), EITHER] = 1


def vocab(layout: Layout | None = None) -> list[str]:
    """Token names: ``<bos>``, then ``A``, ``B``, ... (one letter each)."""
    layout = layout or Layout()
    return ["<bos>"] + [chr(ord("A") + t - 1) for t in range(1, layout.d_vocab)]


@dataclass(frozen=True)
class PlantedRun:
    """The model's neurons over a random corpus: ``tokens`` (sequence, position), ``acts`` (sequence, position, neuron)."""

    tokens: np.ndarray
    acts: np.ndarray


@torch.inference_mode()
def run_corpus(model: HookedTransformer, n_sequences: int, seed: int) -> PlantedRun:
    """Random sequences (BOS, then tokens drawn uniformly from the rest of the vocabulary)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, cfg.d_vocab, (n_sequences, cfg.n_ctx), generator=g)
    tokens[:, 0] = BOS
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == HOOK)
    return PlantedRun(tokens.numpy(), cache[HOOK].numpy().astype(np.float64))


def planted_texts(
    neuron: int, shown: PlantedRun, held_out: PlantedRun, top_k: int = 20, width: int = 16
) -> UnitTexts:
    """Neuron ``neuron`` as a store keeps it: windows of ``width`` tokens ending a little after its
    ``top_k`` strongest tokens of ``shown`` (even ranks shown, as ``split_windows`` does), and every
    token of ``held_out``, a corpus the explainer never sees."""
    acts = shown.acts[:, :, neuron]
    order = np.argsort(-acts, axis=None, kind="stable")[:top_k]
    windows = []
    for rank, flat in enumerate(order):
        seq, pos = divmod(int(flat), acts.shape[1])
        start = max(0, min(pos - width + 4, acts.shape[1] - width))
        windows.append(_window(shown, neuron, seq, start, start + width, rank))
    held = [
        _window(held_out, neuron, s, 0, held_out.tokens.shape[1], 0, "held-out")
        for s in range(len(held_out.tokens))
    ]
    max_act = float(acts.max())
    return UnitTexts(
        UnitRef(SOURCE, neuron), max_act, tuple(w for w in windows if w.rank % 2 == 0), tuple(held)
    )


def _window(
    run: PlantedRun, neuron: int, seq: int, start: int, stop: int, rank: int, bucket: str = "top"
) -> Window:
    ids = [int(t) for t in run.tokens[seq]]
    return Window(
        seq,
        start,
        tuple(ids[max(0, start - MAX_DISTANCE) : start]),
        tuple(ids[start:stop]),
        tuple(float(a) for a in run.acts[seq, start:stop, neuron]),
        bucket,
        rank,
    )


@dataclass(frozen=True)
class PlantedReader:
    """The planted neurons as ``precompute.n2g.UnitReader``: BOS in front, ``D`` the neutral token."""

    model: HookedTransformer
    bos: int = BOS
    neutral: int = D

    @torch.inference_mode()
    def read(self, tokens: Tensor, last: Tensor, units: Tensor) -> Tensor:
        _, cache = self.model.run_with_cache(tokens, names_filter=lambda name: name == HOOK, stop_at_layer=1)
        return cache[HOOK][torch.arange(len(last)), last, units]
