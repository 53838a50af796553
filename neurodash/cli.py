"""The ``neurodash`` command: a thin layer over the Python API.

    neurodash precompute --out store.duckdb [--model M] [--dataset D] [--layers 0-29] ...
    neurodash precompute ... --shard I/N --out STATE; neurodash merge STATE... --out store.duckdb
    torchrun --nproc-per-node K -m neurodash precompute ... --out store.duckdb
    neurodash serve STORE [--host 127.0.0.1] [--port 8050] [--threads 8] [--allowed-host NAME] [--sets-file PATH]
    neurodash demo
    neurodash info STORE
    neurodash train-sae --hook blocks.15.mlp.hook_post --out DIR [--d-sae 4096] [--tokens 200000] ...
    neurodash export STORE --units L3N12,L3.mlp/7 --buckets top --out examples.jsonl
    neurodash maximize STORE --unit L15N345 [--unit L15F7] [--length 12] [--steps 40] [--seed 0] [--json]
    neurodash lab STORE --prompt "A B A B A" [--answer " B"] [--corrupt ...] [--steer L15N631=4.0] [--json]
    neurodash embed STORE [--sources L15.sae]
    neurodash search STORE "closing brackets" [--limit 20] [--json]

Errors the user can fix print one line, ``error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from neurodash import paths
from neurodash.config import (
    AccumulatorConfig,
    MaximizeConfig,
    PrecomputeConfig,
    SAEHyperparams,
    Shard,
    TrainSAEConfig,
)
from neurodash.errors import NeurodashError

if TYPE_CHECKING:
    from neurodash.export import Selection

DEMO_LAYERS = "0-29"
DEMO_TOKENS = PrecomputeConfig.tokens
DEMO_SAE_LAYER = 15  # a middle layer: its SAE's features decompose that layer's neurons
DEMO_SAE_TOKENS = 200_000
DEMO_SAE_WIDTH = 4096
DEMO_HELDOUT_TOKENS: int | None = 8192  # explanations scored on fresh text: layer 15's held-out pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handled = _interrupt_signals() if threading.current_thread() is threading.main_thread() else {}
    _signalled.clear()
    try:
        args.run(args)
    except NeurodashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception:
        if not _signalled:  # DuckDB turns a signal that lands mid-query into "Query interrupted"
            raise
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        for signum, previous in handled.items():
            signal.signal(signum, previous)
    return 0


_signalled: list[int] = []  # the signals received during ``main``
SignalHandler = (
    Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
)  # as signal.signal returns


def _interrupt_signals() -> dict[signal.Signals, SignalHandler]:
    """``kill`` as Ctrl-C, and both remembered: the previous handlers, by signal. Ctrl-C stays ignored
    where it was (a process started in the background)."""
    handled: dict[signal.Signals, SignalHandler] = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    return handled


def _interrupt(signum, frame) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as every other bad input is: one line, exit status 2
    (argparse's own way prints the usage first; ``--help`` still prints it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="neurodash", description="See what neurons and SAE features do.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("precompute", help="stream a corpus through a model into a store")
    add_precompute_args(p)
    config_option(p, PrecomputeConfig, "out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_scale_args(p)
    p.set_defaults(run=cmd_precompute)

    p = sub.add_parser("merge", help="write the store of a run's shards (`precompute --shard I/N` states)")
    p.add_argument("states", type=Path, nargs="+", metavar="STATE")
    p.add_argument("--out", required=True, type=Path, help="the store file to write (.duckdb)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--device",
        help="cpu, cuda, cuda:1, ... or mps: where the states merge and the tables are computed "
        "(default: the device the shards ran on)",
    )
    p.set_defaults(run=cmd_merge)

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

    from neurodash.cli_lab import add_lab_args, cmd_lab

    p = sub.add_parser("lab", help="the circuit lab: attribution, ablation, patching, circuit, steering")
    p.add_argument("store", type=Path)
    add_lab_args(p)
    p.set_defaults(run=cmd_lab)

    from neurodash.cli_search import add_embed_args, add_search_args, cmd_embed, cmd_search

    p = sub.add_parser("embed", help="embed every unit's examples and explanation, for search by meaning")
    add_embed_args(p)
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("search", help="find units by meaning: a query in words across every source")
    add_search_args(p)
    p.set_defaults(run=cmd_search)

    from neurodash.cli_explain import add_explain_args, cmd_explain

    p = sub.add_parser("explain", help="explain units and score the explanations on held-out text")
    p.add_argument("store", type=Path)
    add_explain_args(p)
    p.set_defaults(run=cmd_explain)

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
        kwargs.setdefault("type", whole_number if isinstance(default, int) else float)
    help_text = f.metadata.get("help")
    if help_text and isinstance(default, (str, int, float)) and not isinstance(default, bool):
        help_text += f" (default {default})"
    kwargs.setdefault("help", help_text)
    p.add_argument(flag or "--" + name.replace("_", "-"), **kwargs)


def whole_number(text: str) -> int:
    """An integer option's value, also in float notation where it is whole (``1e6``, ``65_536``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def add_model_and_corpus_args(p: argparse.ArgumentParser, config: type = PrecomputeConfig) -> None:
    for name in ("model", "dataset", "split", "text_column"):
        config_option(p, config, name)


def add_precompute_args(p: argparse.ArgumentParser) -> None:
    add_model_and_corpus_args(p)
    config_option(p, PrecomputeConfig, "layers", type=str)
    for name in ("tokens", "skip_tokens", "ctx"):
        config_option(p, PrecomputeConfig, name)
    p.add_argument("--no-shuffle", action="store_true", help="read documents in order, not a sample")
    config_option(p, PrecomputeConfig, "sample_seed")
    for name in ("top_k", "bottom_k"):
        config_option(p, AccumulatorConfig, name)
    for name in ("batch_size", "device", "dtype"):
        config_option(p, PrecomputeConfig, name)
    config_option(p, PrecomputeConfig, "saes", "--sae", action="append", default=[], metavar="SAE")
    config_option(p, PrecomputeConfig, "keep_bos", action="store_true")
    p.add_argument("--no-scores", action="store_true", help="skip the polysemanticity scores (a bare pass)")
    p.add_argument("--no-heads", action="store_true", help="leave the attention heads out (neurons only)")


def add_scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I of N (its blocks of windows) and write its state to --out; "
        "then `neurodash merge` the N states into the store",
    )
    config_option(p, PrecomputeConfig, "block_batches")
    p.add_argument(
        "--checkpoint-tokens",
        type=whole_number,
        metavar="N",
        help="checkpoint the state every N tokens (at the next block's end) to OUT.checkpoint "
        "(under torchrun each rank its shard's, to OUT.rankI-of-N.checkpoint)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a killed run (or torchrun job) from its checkpoints"
    )


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
    p.add_argument("--threads", type=int, default=8, help="waitress threads serving requests (default 8)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; loopback and --host always; * any)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="Dash debug mode on Flask's development server (reloads, dev tools)",
    )


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
    p.add_argument("--all", action="store_true", help="every unit of the store (instead of a selection)")
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
        skip_tokens=args.skip_tokens,
        shuffle=not args.no_shuffle,
        sample_seed=args.sample_seed,
        ctx=args.ctx,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        keep_bos=args.keep_bos,
        saes=tuple(args.sae),
        scores=not args.no_scores,
        heads=not args.no_heads,
        overwrite=overwrite,
        examples=AccumulatorConfig(top_k=args.top_k, bottom_k=args.bottom_k),
        **({"block_batches": args.block_batches} if "block_batches" in args else {}),
    )


def cmd_precompute(args: argparse.Namespace) -> None:
    cfg = precompute_config(args, args.out, args.overwrite)  # bad settings fail before torch loads
    _note_emulated_bf16(cfg)
    shard = Shard.parse(args.shard) if args.shard else None
    if os.environ.get("RANK") is not None and os.environ.get("WORLD_SIZE") is not None:
        _precompute_torchrun(args, cfg)
        return
    if shard is not None:
        from precompute.scale import precompute_shard

        print(
            f"wrote shard {shard}: {precompute_shard(cfg, shard, args.out, args.checkpoint_tokens, args.resume)}"
        )
        return
    _remove_leftovers(args.out)
    if args.checkpoint_tokens or args.resume:
        from precompute.scale import precompute_resumable

        path = precompute_resumable(cfg, args.checkpoint_tokens, args.resume)
    else:
        from precompute import run_precompute

        path = run_precompute(cfg)
    print(f"wrote {path}")
    _note_short_corpus(path, cfg)


def _precompute_torchrun(args: argparse.Namespace, cfg: PrecomputeConfig) -> None:
    """One rank of a torchrun job: its shard (checkpointed, resumed); rank 0 writes the store."""
    if args.shard:
        raise NeurodashError("under torchrun each rank is a shard: leave out --shard")
    from precompute.distributed import Refused, precompute_distributed, torchrun_rank

    rank = torchrun_rank()
    assert rank is not None
    try:
        path = precompute_distributed(cfg, rank, args.checkpoint_tokens, args.resume)
    except Refused as e:
        if e.rank != 0:  # rank 0 says why, in one line; the others stop with the same status
            raise SystemExit(2) from e
        raise
    if path is not None:
        print(f"wrote {path} ({rank.count} ranks)")


def cmd_merge(args: argparse.Namespace) -> None:
    from precompute.scale import merge_states

    print(f"wrote {merge_states(args.states, args.out, args.overwrite, device=args.device)}")


def _note_emulated_bf16(cfg: PrecomputeConfig) -> None:
    """Say so on stderr when ``--dtype bfloat16`` would run emulated on this CPU (slower, not faster)."""
    if cfg.dtype == "float32":  # the usual case: no torch import here (a bad --shard still fails fast)
        return
    from precompute.device import emulated_bf16_note

    note = emulated_bf16_note(cfg.device, cfg.dtype)
    if note:
        print(note, file=sys.stderr)


def _remove_leftovers(out: Path) -> None:
    """Remove what killed runs left beside ``out`` (partial stores no live run writes), in one line."""
    from neurodash.storage import remove_leftovers

    removed = remove_leftovers(out.parent)
    if removed:
        names = ", ".join(p.name for p, _ in removed)
        size = sum(n for _, n in removed) / 1e6
        print(
            f"note: removed what killed runs left in {out.parent}: {names} ({size:,.1f} MB)", file=sys.stderr
        )


def _note_short_corpus(path: Path, cfg: PrecomputeConfig) -> None:
    """Say so on stderr when the corpus ran out before ``--tokens`` (the store keeps the real count)."""
    from neurodash.storage import Store

    with Store(path) as store:
        n_tokens = int(store.meta.get("n_tokens") or 0)
    if n_tokens < (cfg.tokens // cfg.ctx) * cfg.ctx:
        after = f" after the {cfg.skip_tokens:,} of --skip-tokens" if cfg.skip_tokens >= cfg.ctx else ""
        print(
            f"note: the corpus holds {n_tokens:,} tokens{after} ({n_tokens // cfg.ctx:,} windows of --ctx {cfg.ctx}), "
            f"fewer than --tokens {cfg.tokens:,}: all of it was read",
            file=sys.stderr,
        )


def cmd_serve(args: argparse.Namespace) -> None:
    from neurodash.app import serve

    serve(args.store, sets_file=args.sets_file, **server_options(args))


def server_options(args: argparse.Namespace) -> dict:
    return {
        "host": args.host,
        "port": args.port,
        "debug": args.debug,
        "threads": args.threads,
        "allowed_hosts": args.allowed_host,
    }


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the demo SAE and build the demo store, each once, then serve."""
    store = paths.demo_store_path()
    if not args.no_serve:
        from neurodash.app.server import check_options

        check_options(args.port, args.threads)  # before a build of minutes, not after
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
    explain_demo(store)
    embed_demo(store)
    if not args.no_serve:
        from neurodash.app import serve

        serve(store, **server_options(args))


def explain_demo(store: Path) -> None:
    """Pattern explanations of the SAE layer's neurons and features (once: a run skips those done),
    scored on fresh held-out text (``DEMO_HELDOUT_TOKENS`` after the store's; None: its own windows)."""
    from neurodash.cli_explain import progress_bar
    from neurodash.explain_run import explain_store

    with progress_bar() as progress:
        summary = explain_store(
            store, layers=(DEMO_SAE_LAYER,), progress=progress, fresh_tokens=DEMO_HELDOUT_TOKENS
        )
    if summary.done:
        print(f"explained {summary.done} units of layer {DEMO_SAE_LAYER} in {summary.seconds:.0f} s")


def embed_demo(store: Path) -> None:
    """Embed, for search by meaning, what the demo explains (the SAE layer's neurons and features) and
    every head (once: a run skips what is embedded already)."""
    from neurodash.cli_search import embed_with_progress
    from neurodash.storage import Store
    from neurodash.units import HEAD

    with Store(store) as s:
        sources = [x.source_id for x in s.sources() if x.layer == DEMO_SAE_LAYER or x.kind == HEAD]
    report = embed_with_progress(store, sources)
    if report.embedded:
        print(f"embedded {report.embedded} texts for search by meaning in {report.seconds:.0f} s")


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
    _check_export_scope(selection, args.all)
    with Store(args.store) as store:
        path = export(store, selection, args.format, args.out, args.overwrite, sets_file=args.sets_file)
    print(f"wrote {path}")


def _check_export_scope(selection: Selection, every_unit: bool) -> None:
    """An export names its units (or a set), or says --all: a whole store can be hundreds of MB."""
    chosen = (
        selection.units or selection.layers or selection.sources or selection.ranges or selection.set_name
    )
    if every_unit and chosen:
        raise NeurodashError(
            "--all exports every unit: give it or a selection (--units, --layers, ...), not both"
        )
    if not every_unit and not chosen:
        raise NeurodashError(
            "say which units to export: --units, --layers, --sources, --range (--min-density, ...), "
            "--set, or --all for every unit of the store"
        )


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
