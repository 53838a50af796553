"""The course's exercise ("A B A B A ?") worked with the circuit lab on the default model.

    python benchmarks/lab_exercise.py

Prints: the predictions, the heads whose last token attends two steps back (the course's test,
``attn[-3] > 0.5``), what ablating them does beside as many random heads and the heads that attend to
the token after the last token's previous occurrence (induction-like) and the top heads by the
induction score of ``precompute.heads``, activation patching with a
contrast corruption (the repeated token swapped: answer vs the swapped token), a minimal circuit,
and the same heads on non-periodic patterns.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neurodash.lab import MEAN, ZERO, Component, LabPrompt  # noqa: E402
from precompute.live.lab import Lab  # noqa: E402
from precompute.models import load_model  # noqa: E402

COURSE = ("A B A B A", "X Y X Y X", "1 2 1 2 1", "cat dog cat dog cat")
# (prompt, answer, counterfactual, corrupted): the second token swapped everywhere
CONTRAST = (
    ("A B A B A", " B", " C", "A C A C A"),
    ("X Y X Y X", " Y", " Z", "X Z X Z X"),
    ("1 2 1 2 1 ", "2", "3", "1 3 1 3 1 "),  # digits and spaces are separate tokens
    ("cat dog cat dog cat", " dog", " fish", "cat fish cat fish cat"),
)
NON_PERIODIC = ("A B C A B", "X Y Z X Y", "cat dog bird cat dog", "A B C D E", "cat dog bird fish tree")


def main() -> None:
    torch.set_num_threads(1)
    lab = Lab(load_model())
    print("== predictions (course prompts)")
    course = [lab.prompt(p) for p in COURSE]
    for p in course:
        top = lab.analyse(p).predictions[:3]
        print(f"{p.text!r}: tokens {p.tokens[1:]} -> " + ", ".join(f"{t.token!r} {t.prob:.2f}" for t in top))

    print("\n== attention of the last token (mean over the 4 prompts)")
    patterns = [lab.analyse(p).attention for p in course]
    two_back = np.mean([a.last_token_to(2) for a in patterns], 0)
    strict = sorted({c for a in patterns for c, v in a.ranked(2, top=270) if v > 0.5})
    print("course test attn[-3] > 0.5 on any prompt:", [str(c) for c in strict])
    for back in (1, 2, 3):
        mean_back = np.mean([a.last_token_to(back) for a in patterns], 0)
        ranked = np.argsort(-mean_back, axis=None)[:8]
        print(f"{back} back: " + ", ".join(f"L{i // 9}H{i % 9} {mean_back.flat[i]:.2f}" for i in ranked))
    two_back_heads = [
        Component("head", int(i) // 9, int(i) % 9) for i in np.argsort(-two_back, axis=None)[:5]
    ]
    print("two-back heads used below:", [str(c) for c in two_back_heads])

    contrast = [lab.prompt(t, answer=a, counterfactual=c, corrupted=k) for t, a, c, k in CONTRAST]
    induction = _induction_heads(lab, contrast, len(two_back_heads))
    print(
        "induction-like heads (attend to the token after the previous occurrence):",
        [str(c) for c in induction],
    )

    scored = _scored_induction_heads(lab, len(two_back_heads))
    print(
        "top induction heads by score_heads (attention on repeated random tokens):",
        [str(c) for c in scored],
    )

    print(
        "\n== ablation (metric = logit diff answer - swapped token; kept = (m - corrupted)/(clean - corrupted))"
    )
    means = lab.mean_activations(list(NON_PERIODIC) + [p.text for p in contrast])
    rng = random.Random(0)
    all_heads = [c for c in lab.components() if c.kind == "head"]
    for kind in (ZERO, MEAN):
        print(f"-- {kind}")
        _report_set(lab, contrast, "two-back heads", two_back_heads, kind, means)
        _report_set(lab, contrast, "induction-like heads", induction, kind, means)
        _report_set(lab, contrast, "top induction-score heads", scored, kind, means)
        random_kept = [
            _kept(lab, contrast, rng.sample(all_heads, len(two_back_heads)), kind, means) for _ in range(10)
        ]
        print(
            f"10 random sets of {len(two_back_heads)} heads: kept mean {np.mean(random_kept):.2f}, "
            f"min {np.min(random_kept):.2f}"
        )
    single = lab.ablate(contrast, MEAN, means=means)
    print("top single mean-ablations:", ", ".join(f"{c} {v:+.2f}" for c, v in single.ranked(10)))

    print("\n== activation patching clean -> corrupted (1 = clean)")
    patching = lab.patch(contrast)
    print("top heads:", ", ".join(f"{c} {v:.2f}" for c, v in patching.ranked_heads(8)))
    print("MLPs > 0.1:", ", ".join(f"L{i}MLP {v:.2f}" for i, v in enumerate(patching.mean_mlps()) if v > 0.1))
    for p, resid in zip(contrast, patching.resid):
        layers = ", ".join(
            f"L{layer}:" + " ".join(f"{v:.1f}" for v in resid[layer]) for layer in (0, 8, 12, 16, 20, 29)
        )
        print(f"{p.text!r} resid by position at {layers}")

    print("\n== minimal circuit (mean ablation, >= 80% removed, and >= 80% kept alone if any set does both)")
    circuit = lab.minimal_circuit(contrast, MEAN, single=single, means=means)
    print(
        [str(c) for c in circuit.components],
        f"kept {circuit.kept_when_ablated:.2f}",
        f"faithfulness {circuit.faithfulness:.2f}",
        "found" if circuit.found else "NOT found",
        "sufficient" if circuit.sufficient else "not sufficient",
    )

    print("\n== non-periodic patterns")
    for text in NON_PERIODIC:
        p = lab.prompt(text)
        analysis = lab.analyse(p)
        top = ", ".join(f"{t.token!r} {t.prob:.2f}" for t in analysis.predictions[:3])
        attn = analysis.attention.last_token_to(2)
        on_two_back = " ".join(f"{c}:{attn[c.layer, c.index]:.2f}" for c in two_back_heads)
        zeroed = lab.ablated_logits(p, two_back_heads, ZERO)
        new_top = lab.model.tokenizer.decode([int(np.argmax(zeroed))])
        print(
            f"{text!r}: {top}; two-back heads' attention 2 back {on_two_back}; "
            f"top after zeroing them {new_top!r}"
        )
    print(f"\nforward passes: {lab.forward_passes}")


def _induction_heads(lab: Lab, prompts: list[LabPrompt], n: int) -> list[Component]:
    """Heads by the last token's attention to the token after its previous occurrence (mean)."""
    scores = []
    for p in prompts:
        ids = p.token_ids
        previous = max(i for i in range(len(ids) - 1) if ids[i] == ids[-1])
        scores.append(lab.analyse(p).attention.patterns[:, :, -1, previous + 1])
    mean = np.mean(scores, 0)
    return [Component("head", int(i) // 9, int(i) % 9) for i in np.argsort(-mean, axis=None)[:n]]


def _scored_induction_heads(lab: Lab, n: int) -> list[Component]:
    """The heads with the highest induction score of ``precompute.heads`` (the store's head scores)."""
    from precompute.heads import BridgeAttention, ProbeConfig, attention_scores

    scores = attention_scores(BridgeAttention(lab.model), ProbeConfig(), tuple(range(lab.n_layers)))
    induction = scores["induction"]
    order = np.argsort(-induction, axis=None, kind="stable")[:n]
    return [Component("head", int(i) // lab.n_heads, int(i) % lab.n_heads) for i in order]


def _kept(lab: Lab, prompts: list[LabPrompt], comps: list[Component], kind: str, means) -> float:
    """Mean over the prompts but the digits one, whose clean - corrupted gap is too small to divide by."""
    kept = []
    for p in prompts:
        clean, corrupt = lab.metrics(p)
        if abs(clean - corrupt) > 1.0:
            kept.append((lab.ablated_metric(p, comps, kind, means) - corrupt) / (clean - corrupt))
    return float(np.mean(kept))


def _report_set(
    lab: Lab, prompts: list[LabPrompt], name: str, comps: list[Component], kind: str, means
) -> None:
    per_prompt = []
    for p in prompts:
        logits = lab.ablated_logits(p, comps, kind, means)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        per_prompt.append(f"{p.answer!r} p={probs[p.answer_id]:.2f}")
    print(
        f"{name} {[str(c) for c in comps]}: kept {_kept(lab, prompts, comps, kind, means):.2f}; "
        + ", ".join(per_prompt)
    )


if __name__ == "__main__":
    main()
