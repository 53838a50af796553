"""The ``neurodash`` command: a thin layer over the Python API.

    neurodash precompute --out store.duckdb [--model M] [--dataset D] [--layers 0-29] ...
    neurodash serve STORE [--host 127.0.0.1] [--port 8050]
    neurodash demo
    neurodash info STORE

Errors the user can fix print one line, ``error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from neurodash import paths
from neurodash.errors import NeurodashError

DEMO_LAYERS = "0-29"
DEMO_TOKENS = 65_536


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
    p.add_argument("--out", required=True, type=Path, help="the store file to write (.duckdb)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_precompute)

    p = sub.add_parser("serve", help="browse a store in the dashboard")
    p.add_argument("store", type=Path)
    add_server_args(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("demo", help="build the demo store (once), then serve it")
    add_server_args(p)
    p.add_argument("--rebuild", action="store_true", help="build the demo store again")
    p.add_argument("--no-serve", action="store_true", help="only build the store")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("info", help="summarise a store's sources")
    p.add_argument("store", type=Path)
    p.set_defaults(run=cmd_info)
    return parser


def add_precompute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded 'smollm2-135m' (default), a local HF folder, or a hub name")
    p.add_argument("--dataset", default="python-docs",
                   help="embedded 'python-docs' (default), a .txt/.jsonl/.parquet file or folder, or a hub name")
    p.add_argument("--split", default="train", help="dataset split (hub datasets)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--layers", default=None, help="e.g. 0-29 or 0,15,29 (default: every layer)")
    p.add_argument("--tokens", type=int, default=DEMO_TOKENS, help="corpus tokens to read")
    p.add_argument("--ctx", type=int, default=128, help="tokens per window")
    p.add_argument("--top-k", type=int, default=20, help="top examples per unit")
    p.add_argument("--bottom-k", type=int, default=10, help="bottom (most negative) examples per unit")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--keep-bos", action="store_true",
                   help="keep the first (BOS) position in examples and statistics")


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloads, dev tools)")


def precompute_config(args: argparse.Namespace, out: Path, overwrite: bool):
    from precompute import PrecomputeConfig, parse_layers
    from precompute.accumulate import AccumulatorConfig

    return PrecomputeConfig(
        out=out, model=args.model, dataset=args.dataset, split=args.split, text_column=args.text_column,
        layers=parse_layers(args.layers) if args.layers else None, tokens=args.tokens, ctx=args.ctx,
        batch_size=args.batch_size, device=args.device, keep_bos=args.keep_bos, overwrite=overwrite,
        examples=AccumulatorConfig(top_k=args.top_k, bottom_k=args.bottom_k),
    )


def cmd_precompute(args: argparse.Namespace) -> None:
    from precompute import run_precompute

    path = run_precompute(precompute_config(args, args.out, args.overwrite))
    print(f"wrote {path}")


def cmd_serve(args: argparse.Namespace) -> None:
    from neurodash.app import serve

    serve(args.store, host=args.host, port=args.port, debug=args.debug)


def cmd_demo(args: argparse.Namespace) -> None:
    store = paths.demo_store_path()
    if args.rebuild or not store.is_file():
        from precompute import run_precompute

        store.parent.mkdir(parents=True, exist_ok=True)
        demo_args = build_parser().parse_args(
            ["precompute", "--out", str(store), "--layers", DEMO_LAYERS, "--tokens", str(DEMO_TOKENS)]
        )
        print(f"building the demo store at {store} (once; a few minutes on a laptop CPU)")
        run_precompute(precompute_config(demo_args, store, overwrite=True))
    if not args.no_serve:
        cmd_serve(argparse.Namespace(store=store, host=args.host, port=args.port, debug=args.debug))


def cmd_info(args: argparse.Namespace) -> None:
    from neurodash.store import Store

    with Store(args.store) as store:
        meta = store.meta
        print(f"{args.store}: model {meta.get('model')}, dataset {meta.get('dataset')}, "
              f"{meta.get('n_tokens')} tokens, ctx {meta.get('ctx')}")
        for s in store.sources():
            print(f"  {s.source_id:16s} {s.kind:12s} {s.hook:32s} {s.n_units:6d} units")


if __name__ == "__main__":
    sys.exit(main())
