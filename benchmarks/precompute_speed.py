"""Precompute speed and memory against the bare forward pass, measured side by side in one run.

    python benchmarks/precompute_speed.py [--tokens 16384] [--layers 0-29] [--device cpu]

First a tiny run compiles the CPU kernels where they are not yet (in no figure). Prints (1) the bare
forward pass over the corpus's windows (before and after the run, their mean), (2) the streaming pass of
precompute over the same windows (forward with the exact hooks cached + every unit's state
updated), (3) the whole precompute run including loading and writing the store, its weights cache
empty (cold; ``--warm``: then again, warm), each as a ratio to (1); (4) the added cost of SAE features tracked in the same pass (``--sae``, default the demo's
layer-15 SAE once ``neurodash demo`` has trained it), as a ratio to (1); (5) the pass and the whole
run with polysemanticity scoring over without it; (6) the added cost of tracking every attention
head of the layers, side by side, as a ratio to the bare forward; and (7) peak memory of a
precompute run at N and 4N tokens, in separate processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_forward_seconds(
    model_name: str, tokens: int, ctx: int, batch_size: int, device: str, dtype: str = "float32"
) -> float:
    from precompute.corpus import load_corpus, pack_windows
    from precompute.models import load_model

    model = load_model(model_name, device, dtype)
    batches = list(pack_windows(load_corpus(), model.tokenizer, ctx, batch_size, max_tokens=tokens))
    model.forward(batches[0].tokens)  # warm-up, as the pipeline's first batch is not special
    started = time.perf_counter()
    for batch in batches:
        model.forward(batch.tokens)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - started


def config(args, **overrides):
    """The ``PrecomputeConfig`` of the command line's settings (``overrides`` replace fields)."""
    from precompute import PrecomputeConfig, parse_layers

    settings = dict(
        out="unused",
        model=args.model,
        layers=parse_layers(args.layers),
        tokens=args.tokens,
        ctx=args.ctx,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    return PrecomputeConfig(**(settings | overrides))


def compile_kernels(args, out: Path) -> float:
    """A tiny run first (one layer, two batches, with the SAEs): the CPU kernels compile once a machine
    (and after a change to ``fused.py``), outside every figure. Its seconds."""
    from precompute import parse_layers, run_precompute

    layer = parse_layers(args.layers)[0]
    cfg = config(
        args,
        out=out,
        tokens=2 * args.batch_size * args.ctx,
        layers=(layer,),
        overwrite=True,
        saes=tuple(args.sae),
    )
    started = time.perf_counter()
    run_precompute(cfg, progress=False)
    return time.perf_counter() - started


def precompute_seconds(
    args, tokens: int, out: Path, saes: tuple[str, ...] = (), scores: bool = True
) -> tuple[dict[str, float], float]:
    from neurodash.storage import Store
    from precompute import run_precompute

    cfg = config(args, out=out, tokens=tokens, overwrite=True, saes=saes, scores=scores)
    started = time.perf_counter()
    run_precompute(cfg, progress=False)
    total = time.perf_counter() - started
    with Store(out) as store:
        return json.loads(store.meta["phase_seconds"]), total


def scoring_overhead(args) -> dict[str, float]:
    """Seconds of the pass with and without polysemanticity scoring, measured side by side: every
    batch runs the forward once (caching the context hooks too), then updates two sets of
    accumulators, one copying each entrant's token and projected context, one not, alternating
    which goes first; the scores are then computed and written. Side by side, a shared machine's
    changing load falls on both alike."""
    import torch

    from neurodash.storage import StoreWriter
    from precompute.corpus import load_corpus, pack_windows
    from precompute.models import load_model
    from precompute.pipeline.run import context_hook, features, neurons
    from precompute.pipeline.stream import Contexts
    from precompute.pipeline.tables import examples_table, polysemanticity_tables

    cfg = config(args, dtype="float32", saes=tuple(args.sae))
    model = load_model(cfg.model, cfg.device)
    layers = cfg.layers or ()
    plain = [neurons(model, layer, cfg) for layer in layers] + features(model, cfg)
    scored = [neurons(model, layer, cfg) for layer in layers] + features(model, cfg)
    for t in scored:
        t.context_hook = context_hook(model, t.hook)
    hooks = list(dict.fromkeys([*(t.hook for t in plain), *(t.context_hook for t in scored)]))
    contexts = Contexts(cfg.context_dims, cfg.device, cfg.examples.seed)
    first = 1
    seconds = {"forward": 0.0, "plain": 0.0, "scored": 0.0, "write plain": 0.0, "write scored": 0.0}

    def update(tracked, acts, batch, with_scores: bool) -> float:
        started = time.perf_counter()
        at_token = {}
        if with_scores:
            tokens = batch.tokens.to(cfg.device, torch.int32)
            for h in dict.fromkeys(t.context_hook for t in tracked):
                at_token[h] = {"rep": contexts.project(h, acts[h], first), "tok": tokens}
        for t in tracked:
            unit_acts = acts[t.hook] if t.encode is None else t.encode(acts[t.hook])
            t.acc.update(
                unit_acts, batch.seq_ids, first=first, ctx=cfg.ctx, at_token=at_token.get(t.context_hook)
            )
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    batches = pack_windows(load_corpus(), model.tokenizer, cfg.ctx, cfg.batch_size, max_tokens=cfg.tokens)
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        acts = model.activations(batch.tokens, hooks)
        seconds["forward"] += time.perf_counter() - started
        for name, tracked in (
            [("plain", plain), ("scored", scored)] if i % 2 else [("scored", scored), ("plain", plain)]
        ):
            seconds[name] += update(tracked, acts, batch, name == "scored")
    with (  # one store each, as two runs would write: one file's inserts would slow the other's
        tempfile.TemporaryDirectory() as tmp,
        StoreWriter(Path(tmp) / "plain.duckdb") as plain_writer,
        StoreWriter(Path(tmp) / "scored.duckdb") as scored_writer,
    ):
        for t_plain, t_scored in zip(plain, scored):
            started = time.perf_counter()
            plain_writer.append(
                "examples", examples_table(t_plain.source.source_id, t_plain.acc.result(), cfg.examples)
            )
            seconds["write plain"] += time.perf_counter() - started
            started = time.perf_counter()
            res = t_scored.acc.result()
            scored_writer.append("examples", examples_table(t_scored.source.source_id, res, cfg.examples))
            tables = polysemanticity_tables(
                t_scored.source.source_id, res, contexts.mean(t_scored.context_hook), cfg.context_dims
            )
            scored_writer.append("scores", tables[0])
            scored_writer.append("clusters", tables[1])
            seconds["write scored"] += time.perf_counter() - started
    return seconds


def print_scoring_overhead(args) -> None:
    s = scoring_overhead(args)
    plain, scored = s["forward"] + s["plain"], s["forward"] + s["scored"]
    whole_plain, whole_scored = plain + s["write plain"], scored + s["write scored"]
    print(
        f"  polysemanticity scoring, side by side: update {s['scored']:.2f} s vs {s['plain']:.2f} s without; "
        f"pass (forward {s['forward']:.2f} s + update) {scored / plain:.3f}x; with writing the examples and "
        f"scores ({s['write scored']:.2f} s vs {s['write plain']:.2f} s) {whole_scored / whole_plain:.3f}x "
        "(target <= 1.10x)"
    )


def heads_overhead(args) -> dict[str, float]:
    """Seconds, side by side per batch (alternating which goes first): the bare forward; the forward
    caching the neurons' hooks; the forward caching them and every head's ``hook_z`` and
    ``hook_pattern``; and the heads' update (norms, attention statistics, accumulators copying rows)."""
    import torch

    from precompute.corpus import load_corpus, pack_windows
    from precompute.models import load_model
    from precompute.pipeline.run import heads, neurons
    from precompute.pipeline.stream import SourceUpdater

    cfg = config(args, dtype="float32")
    model = load_model(cfg.model, cfg.device)
    layers = cfg.layers or ()
    neuron_hooks = [neurons(model, layer, cfg).hook for layer in layers]
    tracked = [heads(model, layer, cfg) for layer in layers]
    all_hooks = [*neuron_hooks, *(h for t in tracked for h in (t.hook, t.pattern_hook) if h)]
    seconds = {"bare": 0.0, "neurons": 0.0, "with heads": 0.0, "update heads": 0.0}
    first = 1

    def timed(name: str, fn, *a):
        started = time.perf_counter()
        out = fn(*a)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds[name] += time.perf_counter() - started
        return out

    batches = list(
        pack_windows(load_corpus(), model.tokenizer, cfg.ctx, cfg.batch_size, max_tokens=cfg.tokens)
    )
    model.forward(batches[0].tokens)  # warm-up
    with SourceUpdater(tracked, cfg.device) as update:  # as the pass runs them
        for i, batch in enumerate(batches):
            runs = [
                ("bare", model.forward, (batch.tokens,)),
                ("neurons", model.activations, (batch.tokens, neuron_hooks)),
                ("with heads", model.activations, (batch.tokens, all_hooks)),
            ]
            acts = None
            for name, run, run_args in runs[i % 3 :] + runs[: i % 3]:
                out = timed(name, run, *run_args)
                if name == "with heads":
                    acts = out
            timed(
                "update heads", update, acts, batch.seq_ids, batch.tokens.to(cfg.device), first, cfg.ctx, {}
            )
    return seconds


def print_heads_overhead(args) -> None:
    s = heads_overhead(args)
    added = s["with heads"] - s["neurons"] + s["update heads"]
    print(
        f"  every attention head, side by side: forward caching their hooks +{s['with heads'] - s['neurons']:.2f} s, "
        f"their update {s['update heads']:.2f} s; added cost {added:.2f} s = {added / s['bare']:.3f}x the bare "
        f"forward ({s['bare']:.2f} s) (target <= 0.15x)"
    )


def peak_rss_mb(args, tokens: int, out: Path) -> float:
    """Peak resident memory of a whole precompute run in a fresh process."""
    code = (
        f"import sys, resource; sys.path.insert(0, {str(ROOT)!r})\n"
        "from precompute import PrecomputeConfig, parse_layers, run_precompute\n"
        f"run_precompute(PrecomputeConfig(out={str(out)!r}, model={args.model!r}, layers=parse_layers({args.layers!r}),"
        f" tokens={tokens}, ctx={args.ctx}, batch_size={args.batch_size}, device={args.device!r}, overwrite=True),"
        " progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def demo_sae() -> Path:
    from neurodash import paths
    from neurodash.cli import DEMO_SAE_LAYER

    return paths.home() / f"sae-L{DEMO_SAE_LAYER}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="0-29")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-tokens", type=int, default=4096, help="N for the N vs 4N memory check")
    p.add_argument(
        "--sae", action="append", default=[], help="an SAE folder to time (default: the demo's, if trained)"
    )
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--only-scoring", action="store_true", help="only the scoring overhead line")
    p.add_argument("--only-heads", action="store_true", help="only the attention heads' overhead line")
    p.add_argument("--only-pass", action="store_true", help="only the pass and the whole run (rows 1-3)")
    p.add_argument("--dtype", default="float32", help="the forward pass's dtype (float32 or bfloat16)")
    p.add_argument("--warm", action="store_true", help="also the whole run again, its weights cache warm")
    args = p.parse_args()
    if not args.sae and demo_sae().is_dir():
        args.sae = [str(demo_sae())]

    if args.only_heads:
        print(f"model {args.model}, layers {args.layers}, {args.tokens} tokens, device {args.device}")
        print_heads_overhead(args)
        return
    if args.only_scoring:
        print(f"model {args.model}, layers {args.layers}, {args.tokens} tokens, sae {args.sae}")
        print_scoring_overhead(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NEURODASH_WEIGHTS_CACHE"] = "0"  # off for the warm-up, so the cold run below stays cold
        warm_up = compile_kernels(args, Path(tmp) / "warm-up.duckdb")
        print(f"  a tiny run first, its kernels compiled where they were not: {warm_up:.1f} s (in no figure)")
        os.environ["NEURODASH_WEIGHTS_CACHE"] = str(Path(tmp) / "weights")  # empty: the run below is cold
        forward = (args.model, args.tokens, args.ctx, args.batch_size, args.device, args.dtype)
        bare_before = bare_forward_seconds(*forward)
        phases, total = precompute_seconds(args, args.tokens, Path(tmp) / "bench.duckdb")
        bare_after = bare_forward_seconds(*forward)  # the machine's speed drifts: the mean of both
        bare = (bare_before + bare_after) / 2
        print(f"  bare forward before / after the run     {bare_before:.2f} s / {bare_after:.2f} s")
        stream = phases["forward"] + phases["accumulate"]
        rows = [
            ("bare forward (pre-tokenized, mean)", bare),
            ("precompute: forward, caching hooks", phases["forward"]),
            ("precompute: update every unit", phases["accumulate"]),
            ("precompute: pass (forward + update)", stream),
            ("precompute: tokenize corpus", phases["tokenize"]),
            ("precompute: append sequences", phases["write"]),
            ("precompute: load model, corpus, SAEs", phases.get("load", 0.0)),
            ("precompute: tables after the pass", phases.get("tables", 0.0)),
            ("  of which logit effects", phases.get("logit effects", 0.0)),
            ("  of which probe scores", phases.get("probe scores", 0.0)),
            ("  of which inserts", phases.get("insert", 0.0)),
            ("precompute: whole run (+load, write)", total),
        ]
        print(
            f"model {args.model}, layers {args.layers}, {args.tokens} tokens, "
            f"batch {args.batch_size} x {args.ctx}, device {args.device}"
        )
        for name, seconds in rows:
            print(f"  {name:38s} {seconds:8.2f} s  {seconds / bare:6.2f}x")
        print(
            f"  ratio of the pass to the bare forward: {stream / bare:.2f}x (target <= 1.05x); "
            f"of the whole run {total / bare:.2f}x (target <= 1.3x); bare {args.tokens / bare:.0f} tok/s"
        )
        if args.warm:
            warm_phases, warm = precompute_seconds(args, args.tokens, Path(tmp) / "warm.duckdb")
            bare_warm = (bare_after + bare_forward_seconds(*forward)) / 2  # the forwards beside it
            p = warm_phases
            parts = {
                "load": p["load"],
                "tokenize": p["tokenize"],
                "pass": p["forward"] + p["accumulate"],
                "tables": p["tables"],
            }
            parts["commit and the rest"] = warm - sum(parts.values())
            print(
                f"  whole run again, weights cache warm (logit effects {p.get('logit effects', 0):.2f} s, "
                f"probe scores {p.get('probe scores', 0):.2f} s): {warm:.2f} s = {warm / bare_warm:.2f}x "
                f"the bare forward beside it ({bare_warm:.2f} s); "
                + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts.items())
            )
        if args.only_pass:
            return
        if args.sae:
            with_sae, _ = precompute_seconds(args, args.tokens, Path(tmp) / "sae.duckdb", tuple(args.sae))
            added = with_sae["forward"] + with_sae["accumulate"] - stream
            print(
                f"  with the SAE {', '.join(args.sae)}: pass {with_sae['forward'] + with_sae['accumulate']:.2f} s, "
                f"added cost of its features {added:.2f} s = {added / bare:.2f}x the bare forward"
            )
        print_scoring_overhead(args)
        print_heads_overhead(args)
        if not args.skip_memory:
            n = args.memory_tokens
            small = peak_rss_mb(args, n, Path(tmp) / "n.duckdb")
            large = peak_rss_mb(args, 4 * n, Path(tmp) / "4n.duckdb")
            print(
                f"peak memory at {n} tokens {small:7.0f} MB, at {4 * n} tokens {large:7.0f} MB: "
                f"ratio {large / small:.3f} (target < 1.1)"
            )


if __name__ == "__main__":
    main()
