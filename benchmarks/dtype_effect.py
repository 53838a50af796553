"""``--dtype bfloat16`` against float32: its speed, and how far it moves what the store keeps.

    python benchmarks/dtype_effect.py [--tokens 4096] [--layers 0,15,29]

(1) Speed: the forward pass caching the pass's hooks, in float32 and in bfloat16, side by side per
batch (alternating which goes first), as a ratio; (2) two stores of the same run, one per dtype,
compared: each unit's max activation (relative to the largest of its source), the windows of the
examples both keep (same sequence and position), and whether each unit's top examples are the same
ones (overlap of the top-k sets, and the share of units whose strongest example is unchanged).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def forward_seconds(args) -> dict[str, float]:
    import torch

    from precompute.corpus import load_corpus, pack_windows
    from precompute.models import load_model, mlp_hook
    from precompute.pipeline.attention import pattern_hook, z_hook

    models = {dtype: load_model(args.model, args.device, dtype) for dtype in ("float32", "bfloat16")}
    layers = [int(x) for x in args.layers.split(",")]
    hooks = [h for layer in layers for h in (mlp_hook(layer), z_hook(layer), pattern_hook(layer))]
    batches = list(
        pack_windows(load_corpus(), models["float32"].tokenizer, 128, args.batch_size, max_tokens=args.tokens)
    )
    seconds = dict.fromkeys(models, 0.0)
    for m in models.values():
        m.activations(batches[0].tokens, hooks)  # warm-up
    for i, batch in enumerate(batches):
        for dtype in list(models)[i % 2 :] + list(models)[: i % 2]:
            started = time.perf_counter()
            models[dtype].activations(batch.tokens, hooks)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[dtype] += time.perf_counter() - started
    return seconds


def build(args, dtype: str, out: Path) -> Path:
    from precompute import PrecomputeConfig, parse_layers, run_precompute

    cfg = PrecomputeConfig(
        out=out,
        model=args.model,
        layers=parse_layers(args.layers),
        tokens=args.tokens,
        batch_size=args.batch_size,
        device=args.device,
        dtype=dtype,
    )
    return run_precompute(cfg, progress=False)


def compare(fp32: Path, bf16: Path, k: int) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{fp32}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{bf16}' AS b (READ_ONLY)")
    for kind, (rel, top1, overlap, window) in _by_kind(con, k).items():
        print(
            f"  {kind:7s} max activation moved by {np.median(rel):.2%} median, {rel.max():.2%} at most "
            f"(of the source's largest); strongest example unchanged for {top1:.1%} of units; "
            f"top-{k} sets overlap {overlap:.1%}; windows of shared examples moved by "
            f"{np.median(window):.2%} median, {np.percentile(window, 99):.2%} p99"
        )


def _by_kind(con, k: int) -> dict[str, tuple[np.ndarray, float, float, np.ndarray]]:
    out = {}
    kinds = [r[0] for r in con.execute("SELECT DISTINCT kind FROM a.sources ORDER BY kind").fetchall()]
    for kind in kinds:
        units = con.execute(
            "SELECT a.max_act, b.max_act, max(abs(a.max_act)) OVER (PARTITION BY a.source_id) "
            "FROM a.units a JOIN b.units b USING (source_id, unit) JOIN a.sources s USING (source_id) "
            "WHERE s.kind = ?",
            [kind],
        ).fetchnumpy()
        va, vb, scale = (np.asarray(units[c], dtype=np.float64) for c in units)
        rel = np.abs(va - vb) / np.maximum(scale, 1e-12)
        top = f"SELECT e.source_id, unit, rank, seq_id, pos, acts FROM {{}}.examples e JOIN a.sources s USING (source_id) WHERE s.kind = '{kind}' AND bucket = 'top' AND rank < {k}"
        shared = con.execute(
            f"SELECT count(*) FILTER (WHERE x.rank = 0 AND y.rank = 0), count(*), "
            f"(SELECT count(*) FROM ({top.format('a')})) FROM ({top.format('a')}) x "
            f"JOIN ({top.format('b')}) y USING (source_id, unit, seq_id, pos)"
        ).fetchone()
        n_units = con.execute(
            f"SELECT count(DISTINCT (source_id, unit)) FROM ({top.format('a')}) WHERE rank = 0"
        ).fetchone()[0]
        windows = con.execute(
            f"SELECT x.acts, y.acts FROM ({top.format('a')}) x JOIN ({top.format('b')}) y "
            "USING (source_id, unit, seq_id, pos)"
        ).fetchall()
        scale_w = max(max(abs(v) for v in wa) for wa, _ in windows) if windows else 1.0
        moved = np.array([np.abs(np.subtract(wa, wb)).max() / scale_w for wa, wb in windows])
        out[kind] = (rel, shared[0] / max(n_units, 1), shared[1] / max(shared[2], 1), moved)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="0,15,29")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, default=20, help="top examples compared per unit")
    args = p.parse_args()
    print(f"model {args.model}, layers {args.layers}, {args.tokens} tokens, device {args.device}")
    s = forward_seconds(args)
    print(
        f"  forward caching the pass's hooks, side by side: float32 {s['float32']:.2f} s, bfloat16 "
        f"{s['bfloat16']:.2f} s: bf16 takes {s['bfloat16'] / s['float32']:.2f}x"
    )
    with tempfile.TemporaryDirectory() as tmp:
        stores = {d: build(args, d, Path(tmp) / f"{d}.duckdb") for d in ("float32", "bfloat16")}
        compare(stores["float32"], stores["bfloat16"], args.top_k)


if __name__ == "__main__":
    main()
