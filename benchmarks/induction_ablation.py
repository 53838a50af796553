"""Are the heads that score highest on ``induction`` causally induction heads? Zero-ablate them.

    python benchmarks/induction_ablation.py [--model smollm2-135m] [--k 5] [--seeds 5] [--device cpu]

Scores every head on the synthetic probes (``precompute.heads.score_heads``), then, on held-out
repeated random tokens (BOS, R tokens, the same R again; another seed than the probes'), prints
the mean next-token loss over the second repeat (predicting its tokens 2..R from the ones before):
with no ablation, with the top ``k`` heads by ``induction`` zeroed (their ``hook_z`` set to 0 at
every position), and with ``k`` random heads zeroed, for several seeds, and the ratio of the
increases.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def second_repeat_loss(model, tokens: torch.Tensor, repeat_len: int, heads: list[tuple[int, int]]) -> float:
    """Mean cross-entropy of the second repeat's tokens after its first (already inferable ones),
    with ``heads`` (layer, head) zero-ablated through a hook on ``blocks.L.attn.hook_z``."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)

    def zero(z: torch.Tensor, hook, cut: list[int]) -> torch.Tensor:
        z[:, :, cut] = 0.0
        return z

    hooks = [
        (f"blocks.{layer}.attn.hook_z", lambda z, hook, cut=cut: zero(z, hook, cut))
        for layer, cut in by_layer.items()
    ]
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens.to(model.device)).float()
    # position p predicts token p + 1: the second repeat's tokens 2..R sit at R + 2 .. 2R
    predicted = logits[:, repeat_len + 1 : 2 * repeat_len].log_softmax(-1)
    targets = tokens[:, repeat_len + 2 : 2 * repeat_len + 1].to(predicted.device)
    return -predicted.gather(-1, targets[..., None]).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seeds", type=int, default=5, help="random head sets")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--repeat-len", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from precompute.heads import BridgeAttention, ProbeConfig, repeated_random_tokens, score_heads
    from precompute.models import load_model

    model = load_model(args.model, args.device)
    attention = BridgeAttention(model)
    scores = score_heads(attention, ProbeConfig(repeat_len=args.repeat_len))
    top = [(layer, head) for layer, head, _ in scores.top("induction", args.k)]
    held_out = ProbeConfig(repeat_len=args.repeat_len, n_sequences=args.sequences, seed=1234)
    tokens = repeated_random_tokens(attention, held_out)
    R = args.repeat_len

    base = second_repeat_loss(model, tokens, R, [])
    top_loss = second_repeat_loss(model, tokens, R, top)
    n_heads = attention.n_heads
    every = [(layer, head) for layer in range(model.n_layers) for head in range(n_heads)]
    random_losses = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        chosen = [every[i] for i in rng.choice(len(every), args.k, replace=False)]
        random_losses.append(second_repeat_loss(model, tokens, R, chosen))
        print(
            f"  random {args.k} (seed {seed}) {[f'L{a}H{b}' for a, b in chosen]}: loss {random_losses[-1]:.3f}"
        )
    mean_random = float(np.mean(random_losses))
    print(f"model {args.model}, {args.sequences} sequences of BOS + 2 x {R} random tokens")
    print(
        f"  top {args.k} by induction: {', '.join(f'L{a}H{b} ({s:.2f})' for a, b, s in scores.top('induction', args.k))}"
    )
    print(f"  loss on the second repeat: no ablation {base:.3f}")
    print(f"  top {args.k} induction heads zeroed: {top_loss:.3f}")
    print(
        f"  {args.k} random heads zeroed: mean {mean_random:.3f} over {args.seeds} seeds "
        f"(min {min(random_losses):.3f}, max {max(random_losses):.3f})"
    )
    print(
        f"  loss increase, top vs random: {top_loss - base:.3f} vs {mean_random - base:.3f} = "
        f"{(top_loss - base) / max(mean_random - base, 1e-9):.1f}x; loss ratio {top_loss / mean_random:.2f}x"
    )


if __name__ == "__main__":
    main()
