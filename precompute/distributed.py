"""``torchrun ... -m neurodash precompute ...``: the ranks of one job as the shards of one run.

torchrun sets ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``, the rendezvous address) in each
process's environment. Each rank joins the process group (gloo on CPU, NCCL on CUDA, each rank on
its ``cuda:LOCAL_RANK``), runs shard ``RANK/WORLD_SIZE`` (``scale.run_shard``), and sends its whole
state to rank 0 as safetensors bytes (never pickle), one rank after another; rank 0 merges each
into its own state (exact, so in any order) and writes the store. Multi-node: the same command on every node with torchrun's
``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` (the README's "Scale" section).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
        headers = [done.header]
        for rank, data in _to_rank_zero(payload, _device(cfg)):  # one at a time: rank 0 holds two states
            header, tensors = state.from_bytes(data, f"rank {rank}")
            state.restore(
                tensors, done.run.tracked, done.run.contexts, done.sequences, Path(f"rank {rank}"), True
            )
            headers.append(header)
            del tensors
        if shard.index != 0:
            return None
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


def _to_rank_zero(payload: bytes, device: torch.device) -> Iterator[tuple[int, bytes]]:
    """On rank 0, every other rank's bytes in turn (sizes first, then one send each); elsewhere,
    send this rank's and yield nothing."""
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    if rank != 0:
        dist.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device), dst=0)
        return
    for other in range(1, world):
        buffer = torch.empty(int(sizes[other].item()), dtype=torch.uint8, device=device)
        dist.recv(buffer, src=other)
        yield other, buffer.cpu().numpy().tobytes()
