"""``torchrun ... -m neurodash precompute ...``: the ranks of one job as the shards of one run.

torchrun sets ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``, the rendezvous address) in each
process's environment. Each rank joins the process group (gloo on CPU, NCCL on CUDA, each rank on
its ``cuda:LOCAL_RANK``), runs shard ``RANK/WORLD_SIZE`` (``scale.run_shard``), and sends its whole
state to rank 0 as safetensors bytes (never pickle); rank 0 merges them into its own state (exact,
so in any order) and writes the store. Multi-node: the same command on every node with torchrun's
``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` (the README's "Scale" section).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from neurodash.config import PrecomputeConfig
from neurodash.errors import NeurodashError
from neurodash.storage import check_writable
from precompute.pipeline import state
from precompute.pipeline.shard import Shard
from precompute.scale import run_shard, write_merged


def torchrun_rank() -> Shard | None:
    """This process's shard where torchrun started it (``RANK``/``WORLD_SIZE``), else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        return Shard.parse(f"{rank}/{world}")
    except NeurodashError as e:
        raise NeurodashError(f"torchrun's RANK={rank} WORLD_SIZE={world}: not a rank of the job") from e


def precompute_distributed(cfg: PrecomputeConfig, shard: Shard, progress: bool = True) -> Path | None:
    """Run this rank's shard; rank 0 gathers every state and writes the store (returns its path)."""
    cuda = cfg.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        _agree(cfg, shard)
        done = run_shard(cfg, shard, progress=progress and shard.index == 0)
        payload = state.to_bytes(done.header, done.tensors())
        received = _gather_bytes(payload, torch.device("cuda") if cuda else torch.device("cpu"))
        if shard.index != 0:
            return None
        headers = [done.header]
        for rank, data in enumerate(received[1:], start=1):
            header, tensors = state.from_bytes(data, f"rank {rank}")
            state.restore(
                tensors, done.run.tracked, done.run.contexts, done.sequences, Path(f"rank {rank}"), True
            )
            headers.append(header)
        return write_merged(done.run, cfg, headers, done.sequences, progress)
    finally:
        dist.destroy_process_group()


def _agree(cfg: PrecomputeConfig, shard: Shard) -> None:
    """Rank 0 checks that it may write the store; every rank stops with its answer (one line)."""
    ok = torch.ones(1)
    message = ""
    if shard.index == 0:
        try:
            check_writable(Path(cfg.out), cfg.overwrite)
        except NeurodashError as e:
            ok[0], message = 0, str(e)
    dist.broadcast(ok.to(_device(cfg)), src=0)
    if not ok.item():
        raise NeurodashError(message or f"rank 0 cannot write {cfg.out}")


def _device(cfg: PrecomputeConfig) -> torch.device:
    return torch.device("cuda") if cfg.device.startswith("cuda") else torch.device("cpu")


def _gather_bytes(payload: bytes, device: torch.device) -> list[bytes]:
    """Every rank's bytes, on rank 0 (others get []): sizes first, then padded uint8 tensors."""
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    gathered = [torch.zeros_like(mine) for _ in range(world)] if rank == 0 else None
    dist.gather(mine, gathered, dst=0)
    if gathered is None:
        return []
    return [bytes(g[: int(s.item())].cpu().numpy().tobytes()) for g, s in zip(gathered, sizes)]
