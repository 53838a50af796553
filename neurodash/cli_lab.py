"""``neurodash lab``: a circuit-lab run from the command line, printed as text (or JSON) and saved
to the lab runs file beside the store.

    neurodash lab STORE --prompt "A B A B A" --prompt "X Y X Y X" [--answer " B"] [--counterfactual " C"]
        [--corrupt "A C A C A"] [--corruption one-token|random] [--ablation zero|mean|resample]
        [--steer L15N631=4.0] [--tokens 10] [--threads 1] [--results PATH] [--json]

Every input is checked before anything runs; bad input prints one line and exits with status 2,
saving nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neurodash.errors import NeurodashError
from neurodash.lab import ABLATIONS, MEAN
from neurodash.lab_run import CORRUPTIONS, ONE_TOKEN, STEER_TOKENS, LabRun, LabSettings, parse_steer

TOP = 8


def add_lab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", default=[], help="a clean prompt (repeatable)")
    p.add_argument(
        "--answer", action="append", default=[], help="the answer token per prompt (default: top prediction)"
    )
    p.add_argument(
        "--counterfactual",
        action="append",
        default=[],
        help="a counterfactual token per prompt: metric = logit diff",
    )
    p.add_argument(
        "--corrupt", action="append", default=[], help="the corrupted prompt per prompt (same length)"
    )
    p.add_argument("--corruption", default=ONE_TOKEN, help=f"when no --corrupt: {' or '.join(CORRUPTIONS)}")
    p.add_argument("--ablation", default=MEAN, help=f"{', '.join(ABLATIONS)} (default {MEAN})")
    p.add_argument(
        "--steer", action="append", default=[], metavar="UNIT=COEF", help="e.g. L15N631=4.0, L8H1=2"
    )
    p.add_argument("--tokens", default=str(STEER_TOKENS), help="tokens generated when steering")
    p.add_argument("--threads", default="1", help="torch threads (1 is fastest for the lab on a small CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path, help="the lab runs file (default: STORE.lab.duckdb beside it)")
    p.add_argument("--json", action="store_true", help="print the whole run as JSON")


def settings_from_args(args: argparse.Namespace) -> LabSettings:
    try:
        tokens = int(args.tokens)
    except ValueError:
        raise NeurodashError(f"--tokens {args.tokens!r} is not a whole number") from None
    return LabSettings(
        prompts=tuple(args.prompt),
        answers=tuple(args.answer),
        counterfactuals=tuple(args.counterfactual),
        corrupted=tuple(args.corrupt),
        corruption=args.corruption,
        ablation=args.ablation,
        steer=tuple(parse_steer(s) for s in args.steer),
        steer_tokens=tokens,
    ).check()


def cmd_lab(args: argparse.Namespace) -> None:
    from neurodash.storage import Store
    from neurodash.storage.lab import LabRuns

    settings = settings_from_args(args)
    try:
        threads = int(args.threads)
    except ValueError:
        raise NeurodashError(f"--threads {args.threads!r} is not a whole number") from None
    Store(args.store).close()  # a missing or unreadable store fails here, before the model loads
    runs = LabRuns.beside(args.store, args.results).check()
    import torch

    from precompute.live.lab_run import run_lab

    torch.set_num_threads(max(1, threads))
    run = run_lab(args.store, settings, progress=_progress, device=args.device)
    run_id = runs.save(run)
    print(f"saved run {run_id} in {runs.path}", file=sys.stderr)
    if args.json:
        print(json.dumps(LabRun.to_json(run) | {"run_id": run_id}, allow_nan=False))
    else:
        print(run_report(run))


def _progress(done: int, total: int, stage: str) -> None:
    print(f"[{done}/{total}] {stage}", file=sys.stderr)


def run_report(run: LabRun) -> str:
    """The run as text: per prompt predictions and top direct attributions; then ablation, patching
    (gap-weighted), the circuit and steering."""
    lines = [
        f"model {run.model}: {len(run.prompts)} prompts, {run.seconds:.1f} s, {run.forward_passes} forward passes"
    ]
    for p, a in zip(run.prompts, run.analyses):
        preds = ", ".join(f"{x.token!r} {x.prob:.2f}" for x in a.predictions[:5])
        lines.append(f"\n{p.text!r} -> {preds}")
        lines.append(f"  metric {p.metric_name}; corrupted {''.join(p.corrupted_tokens[1:])!r}")
        dla = a.attribution.heads
        order = [divmod(int(i), dla.shape[1]) for i in (-abs(dla)).argsort(axis=None)[:TOP]]
        lines.append(
            "  top direct logit attribution: " + ", ".join(f"L{i}H{h} {dla[i, h]:+.2f}" for i, h in order)
        )
    small = run.small_gap_prompts()
    if small:
        lines.append(
            "\nwarning: clean and corrupted runs barely differ on prompt(s) "
            + ", ".join(str(i + 1) for i in small)
            + ": their normalised scores are noisy (averages weight prompts by their gap)"
        )
    lines.append(f"\nablation ({run.ablation.kind}), most harmful first: ")
    lines[-1] += ", ".join(f"{c} {v:+.2f}" for c, v in run.ablation.ranked(TOP))
    if run.ablation.neurons:
        lines.append("top neurons by direct attribution, ablated: ")
        effects = run.ablation.neuron_effects.mean(0)
        lines[-1] += ", ".join(f"{c} {v:+.2f}" for c, v in zip(run.ablation.neurons, effects))
    lines.append("patching heads (clean -> corrupted, 1 = clean): ")
    lines[-1] += ", ".join(f"{c} {v:.2f}" for c, v in run.patching.ranked_heads(TOP))
    c = run.circuit
    status = (
        f" (NOT found: no set of up to its size limit removes {c.threshold:.0%})"
        if not c.found
        else ""
        if c.sufficient
        else f" (necessary, not sufficient: no set of up to its size limit recovers {c.threshold:.0%} alone)"
    )
    lines.append(
        f"minimal circuit: {', '.join(map(str, c.components))}{status}; kept when ablated "
        f"{c.kept_when_ablated:.2f}, faithfulness {c.faithfulness:.2f}"
    )
    for s in run.steering:
        lines.append(f"steering {s.steer}: {s.run.unsteered_text!r} -> {s.run.steered_text!r}")
    return "\n".join(lines)
