"""``torchrun ... -m neurodash precompute ...``: the ranks of one job as the shards of one run.

torchrun sets ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``, the rendezvous address) in each
process's environment. Each rank joins the process group (gloo on CPU, NCCL on CUDA, each rank on
its ``cuda:LOCAL_RANK``), runs shard ``RANK/WORLD_SIZE`` (``scale.run_shard``), and sends its whole
state to rank 0 as safetensors bytes (never pickle), one rank after another; rank 0 merges each
into its own state (exact, so in any order) and writes the store. With ``--checkpoint-tokens`` each
rank checkpoints its own shard to ``OUT.rankI-of-N.checkpoint`` (``scale.checkpoint_path``), and
``--resume`` resumes every rank from its own; the files go once the store is written. Multi-node: the same command on every node with torchrun's
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
from precompute.scale import check_resume, checkpoint_path, run_shard, write_merged


def torchrun_rank() -> Shard | None:
    """This process's shard where torchrun started it (``RANK``/``WORLD_SIZE``), else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        return Shard.parse(f"{rank}/{world}")
    except NeurodashError as e:
        raise NeurodashError(f"torchrun's RANK={rank} WORLD_SIZE={world}: not a rank of the job") from e


class Refused(NeurodashError):
    """A rank's settings or files refused before any rank starts: rank 0 says why (in one line), the
    other ranks stop quietly (with the same exit status)."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


def precompute_distributed(
    cfg: PrecomputeConfig,
    shard: Shard,
    every_tokens: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path | None:
    """Run this rank's shard (checkpointed every ``every_tokens`` of it to its own file beside the
    store, or resumed from it); rank 0 gathers every state and writes the store (returns its path)."""
    cuda = cfg.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        checkpoint = _agree(cfg, shard, resume)
        done = run_shard(
            cfg,
            shard,
            checkpoint if every_tokens or resume else None,
            every_tokens,
            resume,
            progress=progress and shard.index == 0,
        )
        payload = b"" if shard.index == 0 else state.to_bytes(done.header, done.tensors())
        headers = [done.header]
        for rank, data in _to_rank_zero(payload, _device(cfg)):  # one at a time: rank 0 holds two states
            header, tensors = state.from_bytes(data, f"rank {rank}")
            del data
            state.restore(
                tensors, done.run.tracked, done.run.contexts, done.sequences, Path(f"rank {rank}"), True
            )
            headers.append(header)
            del tensors
        path = None
        if shard.index == 0:
            path = write_merged(done.run, cfg, headers, done.sequences, progress)
        else:
            del done, payload  # sent: freed while rank 0 writes
        dist.barrier()  # the store is written: no rank needs its checkpoint any more
        checkpoint.unlink(missing_ok=True)
        return path
    finally:
        dist.destroy_process_group()


def _agree(cfg: PrecomputeConfig, shard: Shard, resume: bool) -> Path:
    """Before any rank starts: rank 0 checks that it may write the store, and with ``resume`` each
    rank that it has its own checkpoint of this run. Where any rank is refused, every rank stops
    (``Refused``: the first refusal, in rank order). Returns this rank's checkpoint path."""
    out = Path(cfg.out)
    checkpoint = checkpoint_path(out, shard)
    message = ""
    try:
        if shard.index == 0:
            check_writable(out, cfg.overwrite)
        if resume:
            check_resume(cfg, shard, out, rank=shard)
    except NeurodashError as e:
        message = str(e)
    messages = _gather_text(message, _device(cfg))
    refused = next(((rank, m) for rank, m in enumerate(messages) if m), None)
    if refused is not None:
        rank, text = refused
        raise Refused(text if rank == 0 else f"rank {rank}/{shard.count}: {text}", shard.index)
    return checkpoint


def _gather_text(text: str, device: torch.device, limit: int = 2048) -> list[str]:
    """Every rank's ``text`` (UTF-8, cut at ``limit`` bytes), in rank order."""
    data = text.encode()[:limit]
    raw = len(data).to_bytes(8, "little") + data.ljust(limit, b"\0")
    buffer = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(device)
    gathered = [torch.zeros_like(buffer) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, buffer)
    texts = []
    for g in gathered:
        raw = g.cpu().numpy().tobytes()
        n = int.from_bytes(raw[:8], "little")
        texts.append(raw[8 : 8 + n].decode(errors="replace"))
    return texts


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
        return  # rank 0 sends nothing: its own state is already where the others merge
    for other in range(1, world):
        buffer = torch.empty(int(sizes[other].item()), dtype=torch.uint8, device=device)
        dist.recv(buffer, src=other)
        data = buffer.cpu().numpy().tobytes()
        del buffer  # rank 0 holds one copy of each state's bytes at a time
        yield other, data
