"""The ``neurodash`` command: a thin layer over the Python API.

    neurodash precompute --out store.duckdb [--model M] [--dataset D] [--layers 0-29] ...
    neurodash serve STORE [--host 127.0.0.1] [--port 8050] [--sets-file PATH]
    neurodash demo
    neurodash info STORE
    neurodash train-sae --hook blocks.15.mlp.hook_post --out DIR [--d-sae 4096] [--tokens 200000] ...
    neurodash export STORE --units L3N12,L3.mlp/7 --buckets top --out examples.jsonl
    neurodash maximize STORE --unit L15N345 [--unit L15F7] [--length 12] [--steps 40] [--seed 0] [--json]

Errors the user can fix print one line, ``error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurodash import paths
from neurodash.config import (
    AccumulatorConfig,
    MaximizeConfig,
    PrecomputeConfig,
    SAEHyperparams,
    TrainSAEConfig,
)
from neurodash.errors import NeurodashError

DEMO_LAYERS = "0-29"
DEMO_TOKENS = PrecomputeConfig.tokens
DEMO_SAE_LAYER = 15  # a middle layer: its SAE's features decompose that layer's neurons
DEMO_SAE_TOKENS = 200_000
DEMO_SAE_WIDTH = 4096


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None  # `kill` = Ctrl-C
    try:
        args.run(args)
    except NeurodashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurodash", description="See what neurons and SAE features do.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("precompute", help="stream a corpus through a model into a store")
    add_precompute_args(p)
    config_option(p, PrecomputeConfig, "out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_precompute)

    p = sub.add_parser("serve", help="browse a store in the dashboard")
    p.add_argument("store", type=Path)
    add_server_args(p)
    p.add_argument(
        "--sets-file",
        type=Path,
        help="the curated sets file to read and write (default: STORE.sets.duckdb beside it)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("demo", help="build the demo store (once), then serve it")
    add_server_args(p)
    p.add_argument("--rebuild", action="store_true", help="build the demo store again")
    p.add_argument("--no-serve", action="store_true", help="only build the store")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("info", help="summarise a store's sources")
    p.add_argument("store", type=Path)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("export", help="write examples to csv, jsonl, parquet or a standalone html report")
    p.add_argument("store", type=Path)
    add_export_args(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("maximize", help="search prompts that drive units hardest (activation maximization)")
    p.add_argument("store", type=Path)
    add_maximize_args(p)
    p.set_defaults(run=cmd_maximize)

    p = sub.add_parser("train-sae", help="train a sparse autoencoder on one hook (SAELens, TopK)")
    add_train_sae_args(p)
    p.set_defaults(run=cmd_train_sae)
    return parser


def config_option(
    p: argparse.ArgumentParser, config: type, name: str, flag: str | None = None, **kwargs: Any
) -> None:
    """An option whose default, type and help come from a field of a config in ``neurodash.config``
    (``--top-k`` from ``AccumulatorConfig.top_k``); ``kwargs`` override them."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else None
    kwargs.setdefault("default", default)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and "action" not in kwargs:
        kwargs.setdefault("type", type(default))
    help_text = f.metadata.get("help")
    if help_text and isinstance(default, (str, int, float)) and not isinstance(default, bool):
        help_text += f" (default {default})"
    kwargs.setdefault("help", help_text)
    p.add_argument(flag or "--" + name.replace("_", "-"), **kwargs)


def add_model_and_corpus_args(p: argparse.ArgumentParser, config: type = PrecomputeConfig) -> None:
    for name in ("model", "dataset", "split", "text_column"):
        config_option(p, config, name)


def add_precompute_args(p: argparse.ArgumentParser) -> None:
    add_model_and_corpus_args(p)
    config_option(p, PrecomputeConfig, "layers", type=str)
    for name in ("tokens", "ctx"):
        config_option(p, PrecomputeConfig, name)
    p.add_argument("--no-shuffle", action="store_true", help="read documents in order, not a sample")
    config_option(p, PrecomputeConfig, "sample_seed")
    for name in ("top_k", "bottom_k"):
        config_option(p, AccumulatorConfig, name)
    for name in ("batch_size", "device"):
        config_option(p, PrecomputeConfig, name)
    config_option(p, PrecomputeConfig, "saes", "--sae", action="append", default=[], metavar="SAE")
    config_option(p, PrecomputeConfig, "keep_bos", action="store_true")
    p.add_argument("--no-scores", action="store_true", help="skip the polysemanticity scores (a bare pass)")


def add_train_sae_args(p: argparse.ArgumentParser) -> None:
    add_model_and_corpus_args(p, TrainSAEConfig)
    config_option(p, TrainSAEConfig, "hook", required=True)
    for name in ("d_sae", "k"):
        config_option(p, SAEHyperparams, name)
    for name in ("tokens", "ctx"):
        config_option(p, TrainSAEConfig, name)
    config_option(p, SAEHyperparams, "batch_tokens")
    config_option(p, TrainSAEConfig, "batch_size")
    for name in ("lr", "seed"):
        config_option(p, SAEHyperparams, name)
    config_option(p, TrainSAEConfig, "device")
    config_option(p, TrainSAEConfig, "out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def add_maximize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="REF",
        help="L12N345, L15F7 or <source>/<index> (repeatable, or comma-separated)",
    )
    p.add_argument("--units-file", type=Path, help="a file of unit references, one per line (# comments)")
    for name in ("length", "steps", "seed"):
        config_option(p, MaximizeConfig, name)
    config_option(p, PrecomputeConfig, "device")
    p.add_argument("--results", type=Path, help="the results file (default: STORE.maximize.duckdb beside it)")
    p.add_argument("--json", action="store_true", help="print the frontiers as JSON (a list, one per unit)")


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloads, dev tools)")


def add_export_args(p: argparse.ArgumentParser) -> None:
    many = {"action": "append", "default": []}
    p.add_argument("--units", **many, help="unit references: L12N345, L12F7, L12.mlp/345 (comma-separated)")
    p.add_argument("--layers", help="e.g. 0-3 or 0,15,29")
    p.add_argument("--sources", **many, help="source ids such as L12.mlp (comma-separated)")
    p.add_argument("--min-density", type=float)
    p.add_argument("--max-density", type=float)
    p.add_argument("--min-max-act", type=float)
    p.add_argument("--max-max-act", type=float)
    p.add_argument(
        "--range",
        **many,
        metavar="METRIC=LOW:HIGH",
        help="a statistic or score metric within bounds, either open: skew=2:, polysemanticity=:0.3",
    )
    p.add_argument(
        "--buckets", **many, help="top, bottom, q0.40, ... or quantiles (comma-separated; default all)"
    )
    p.add_argument("--set", help="a curated set's examples")
    p.add_argument(
        "--sets-file", type=Path, help="the curated sets file (default: STORE.sets.duckdb beside it)"
    )
    p.add_argument("--format", help="csv, jsonl, parquet or html (default: from --out's extension)")
    p.add_argument("--out", required=True, type=Path, help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def precompute_config(args: argparse.Namespace, out: Path, overwrite: bool) -> PrecomputeConfig:
    from neurodash.units import parse_layers

    return PrecomputeConfig(
        out=out,
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        text_column=args.text_column,
        layers=parse_layers(args.layers) if args.layers else None,
        tokens=args.tokens,
        shuffle=not args.no_shuffle,
        sample_seed=args.sample_seed,
        ctx=args.ctx,
        batch_size=args.batch_size,
        device=args.device,
        keep_bos=args.keep_bos,
        saes=tuple(args.sae),
        scores=not args.no_scores,
        overwrite=overwrite,
        examples=AccumulatorConfig(top_k=args.top_k, bottom_k=args.bottom_k),
    )


def cmd_precompute(args: argparse.Namespace) -> None:
    from precompute import run_precompute

    path = run_precompute(precompute_config(args, args.out, args.overwrite))
    print(f"wrote {path}")


def cmd_serve(args: argparse.Namespace) -> None:
    from neurodash.app import serve

    serve(args.store, host=args.host, port=args.port, debug=args.debug, sets_file=args.sets_file)


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the demo SAE and build the demo store, each once, then serve."""
    store = paths.demo_store_path()
    if args.rebuild or not store.is_file():
        from precompute import run_precompute

        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the demo store at {store} (once; a few minutes on a laptop CPU)")
        sae = demo_sae()
        demo_args = build_parser().parse_args(
            [
                "precompute",
                "--out",
                str(store),
                "--layers",
                DEMO_LAYERS,
                "--tokens",
                str(DEMO_TOKENS),
                "--sae",
                str(sae),
            ]
        )
        run_precompute(precompute_config(demo_args, store, overwrite=True))
    if not args.no_serve:
        from neurodash.app import serve

        serve(store, host=args.host, port=args.port, debug=args.debug)


def demo_sae() -> Path:
    """The demo's SAE on the default model's middle MLP, trained once into $NEURODASH_HOME."""
    from precompute import mlp_hook
    from precompute.sae import train_sae

    folder = paths.home() / f"sae-L{DEMO_SAE_LAYER}"
    if not (folder / "cfg.json").is_file():
        print(f"training the demo SAE on {mlp_hook(DEMO_SAE_LAYER)} (once)")
        result = train_sae(
            TrainSAEConfig(
                out=folder,
                hook=mlp_hook(DEMO_SAE_LAYER),
                tokens=DEMO_SAE_TOKENS,
                overwrite=True,
                sae=SAEHyperparams(d_sae=DEMO_SAE_WIDTH),
            )
        )
        print(result.metrics.summary())
    return folder


def cmd_train_sae(args: argparse.Namespace) -> None:
    from precompute.sae import train_sae

    hyperparams = SAEHyperparams(
        d_sae=args.d_sae, k=args.k, lr=args.lr, batch_tokens=args.batch_tokens, seed=args.seed
    )
    result = train_sae(
        TrainSAEConfig(
            out=args.out,
            hook=args.hook,
            model=args.model,
            dataset=args.dataset,
            split=args.split,
            text_column=args.text_column,
            tokens=args.tokens,
            ctx=args.ctx,
            batch_size=args.batch_size,
            device=args.device,
            overwrite=args.overwrite,
            sae=hyperparams,
        )
    )
    print(f"wrote {result.path} ({result.train_tokens:,} training tokens, {result.seconds:.0f} s)")
    print(result.metrics.summary())


def cmd_info(args: argparse.Namespace) -> None:
    from neurodash.storage import Store

    with Store(args.store) as store:
        meta = store.meta
        print(
            f"{args.store}: model {meta.get('model')}, dataset {meta.get('dataset')}, "
            f"{meta.get('n_tokens')} tokens, ctx {meta.get('ctx')}"
        )
        for s in store.sources():
            print(f"  {s.source_id:16s} {s.kind:12s} {s.hook:32s} {s.n_units:6d} units")


def cmd_export(args: argparse.Namespace) -> None:
    from neurodash.export import Selection, export, parse_range, split_list
    from neurodash.storage import Store
    from neurodash.units import parse_layers

    ranges = [parse_range(text) for text in args.range]
    for metric, low, high in (
        ("density", args.min_density, args.max_density),
        ("max_act", args.min_max_act, args.max_max_act),
    ):
        if low is not None or high is not None:
            ranges.append((metric, low, high))
    selection = Selection(
        units=split_list(args.units),
        layers=parse_layers(args.layers) if args.layers else (),
        sources=split_list(args.sources),
        ranges=tuple(ranges),
        buckets=split_list(args.buckets),
        set_name=args.set,
    )
    with Store(args.store) as store:
        path = export(store, selection, args.format, args.out, args.overwrite, sets_file=args.sets_file)
    print(f"wrote {path}")


def cmd_maximize(args: argparse.Namespace) -> None:
    """Each unit's frontier as a table (or JSON), saved to the results file beside the store."""
    import json

    from tqdm.auto import tqdm

    from neurodash.export import split_list
    from neurodash.storage import Store
    from neurodash.storage.maximize import MaximizeResults

    refs = list(split_list(args.unit)) + _units_file(args.units_file)
    if not refs:
        raise NeurodashError("name the units to maximize with --unit or --units-file")
    from precompute.live.maximize import maximize_many

    config = MaximizeConfig(length=args.length, steps=args.steps, seed=args.seed)
    Store(args.store).close()  # a missing or unreadable store fails here, before the model loads
    results = MaximizeResults.beside(args.store, args.results)
    if not results.path.parent.is_dir():
        raise NeurodashError(f"cannot write {results.path}: folder {results.path.parent} does not exist")
    bars: list = []

    def progress_for(ref):
        bars.append(tqdm(total=config.steps, desc=str(ref), unit="step", file=sys.stderr))
        return lambda done, total: bars[-1].update(done - bars[-1].n)

    found = []
    for frontier in maximize_many(args.store, refs, config, progress_for, args.device):
        bars[-1].close()
        results.save(frontier)
        found.append(frontier)
        if not args.json:
            print(frontier_table(frontier))
    if args.json:
        print(json.dumps([f.to_json() for f in found], indent=1))


def _units_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise NeurodashError(
            f"cannot read --units-file {path}: {getattr(e, 'strerror', None) or e}"
        ) from None
    from neurodash.export import split_list

    return list(split_list(line.split("#")[0] for line in lines))


def frontier_table(frontier) -> str:
    """A frontier as text: one prompt a line, by rising cross-entropy (the prompt as a Python string)."""
    f = frontier
    lines = [
        f"{f.ref}: corpus max {f.corpus_max:.3f}; {len(f.prompts)} prompts on the frontier "
        f"({f.steps} steps, length {f.length}, seed {f.seed}, {f.seconds:.0f} s)",
        f"  {'activation':>10}  {'x corpus':>8}  {'CE':>6}  prompt",
    ]
    for p in f.prompts:
        ratio = f"{p.activation / f.corpus_max:7.2f}x" if f.corpus_max > 0 else f"{'-':>8}"
        lines.append(f"  {p.activation:10.3f}  {ratio}  {p.cross_entropy:6.2f}  {p.text!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
