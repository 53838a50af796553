"""A pass's whole mergeable state, in a file: what a shard writes, a checkpoint keeps, a merge reads.

The file is safetensors (tensors only, safe to load from anyone: no pickle) with one JSON header
in its metadata: the format and its version, the model, corpus and settings of the run (its
``PrecomputeConfig`` but for ``out`` and ``overwrite``), the shard ``I/N``, the next block to read,
the tokens read and whether the shard is complete (a checkpoint is not). Tensors are named
``{source_id}/acc/{name}`` (``UnitAccumulator.state``), ``{source_id}/attention/...``,
``{source_id}/bridge/...``, ``contexts/{hook}...`` and ``sequences/{column}``. In the file each
int64 tensor (the exact sums' limbs above all) is packed without the bytes that are zero in every
element (``pack``, lossless): most of a sum's 4-5 limbs of 8 bytes are zero.

Every check of a file, and of files that should belong together, fails with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neurodash.config import AccumulatorConfig, PrecomputeConfig
from neurodash.errors import NeurodashError
from precompute.pipeline.exact import ExactSum
from precompute.pipeline.shard import Shard
from precompute.pipeline.stream import Contexts, Tracked

FORMAT = "neurodash-pass-state"
VERSION = 2  # 2: int64 tensors packed (``pack``); version 1 files (none packed) are read too
READS = (1, 2)
SEQUENCE_COLUMNS = ("seq_id", "doc_id", "start", "token_ids")
_RUN_ONLY = ("out", "overwrite")  # settings that differ between shards of one run


@dataclass(frozen=True)
class StateHeader:
    """Which run a state belongs to, and how far it got."""

    config: dict  # the run's PrecomputeConfig as a dict, without out and overwrite
    shard: Shard
    next_block: int = 0  # the first block not yet read (a checkpoint resumes there)
    n_tokens: int = 0
    complete: bool = False  # False: a checkpoint
    sampling: dict = field(default_factory=dict)  # how the corpus was sampled (the store's config)
    phase_seconds: dict = field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["shard"] = str(self.shard)
        d["version"] = VERSION  # what is written now, whichever version was read
        return json.dumps({"format": FORMAT, **d})

    @classmethod
    def from_json(cls, text: str, path: Path) -> StateHeader:
        try:
            d = json.loads(text)
            if d.pop("format", None) != FORMAT:
                raise ValueError
            version = d.get("version")
            if version not in READS:
                raise NeurodashError(
                    f"{path}: a pass state of format version {version}; this neurodash reads versions "
                    f"{READS[0]}-{READS[-1]}: run that shard again with this version"
                )
            d["shard"] = Shard.parse(d["shard"])
            return cls(**d)
        except (ValueError, TypeError, KeyError, AttributeError, NeurodashError) as e:
            if isinstance(e, NeurodashError) and "format version" in str(e):
                raise
            raise NeurodashError(
                f"{path}: not a neurodash pass state (see `neurodash precompute --shard`)"
            ) from e


def run_config(cfg: PrecomputeConfig) -> dict:
    """The settings every shard of one run shares (JSON-ready)."""
    d = dataclasses.asdict(cfg)
    for name in _RUN_ONLY:
        d.pop(name)
    return json.loads(json.dumps(d))  # tuples become lists, as they come back from a file


def config_of(header: StateHeader, out: Path, overwrite: bool) -> PrecomputeConfig:
    """The run's ``PrecomputeConfig`` back from a header, writing to ``out``."""
    d = dict(header.config)
    examples = AccumulatorConfig(**d.pop("examples"))
    layers, saes = d.pop("layers"), d.pop("saes")
    return PrecomputeConfig(
        **d,
        layers=None if layers is None else tuple(layers),
        saes=tuple(saes),
        examples=examples,
        out=out,
        overwrite=overwrite,
    )


class Sequences:
    """The windows a shard read, kept to be written by whoever writes the store (an ``Appender``)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {c: [] for c in SEQUENCE_COLUMNS}

    def append(self, table: str, columns: dict[str, np.ndarray]) -> None:
        assert table == "sequences", table
        for name in SEQUENCE_COLUMNS:
            self.chunks[name].append(np.asarray(columns[name]))

    def columns(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate(chunks) if chunks else _empty_column(name)
            for name, chunks in self.chunks.items()
        }

    def extend(self, columns: dict[str, np.ndarray]) -> None:
        if len(columns["seq_id"]):
            self.append("sequences", columns)


def _empty_column(name: str) -> np.ndarray:
    return np.zeros((0, 0), dtype=np.int32) if name == "token_ids" else np.zeros(0, dtype=np.int64)


def capture(tracked: list[Tracked], contexts: Contexts | None, sequences: Sequences) -> dict[str, Tensor]:
    """Every tensor of the pass's state (sums flushed: call at a block's end)."""
    out: dict[str, Tensor] = {}
    for t in tracked:
        sid = t.source.source_id
        out |= {f"{sid}/acc/{k}": v for k, v in t.acc.state().items()}
        if t.attention is not None:
            out |= {f"{sid}/attention/{k}": v for k, v in t.attention.state().items()}
        if t.bridge is not None:
            out[f"{sid}/bridge/attribution"] = t.bridge.attribution.state()
            out[f"{sid}/bridge/strong"] = t.bridge.strong.state()
    if contexts is not None:
        out |= {f"contexts/{k}": v for k, v in contexts.state().items()}
    out |= {
        f"sequences/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in sequences.columns().items()
    }
    return out


def restore(
    tensors: dict[str, Tensor],
    tracked: list[Tracked],
    contexts: Contexts | None,
    sequences: Sequences,
    path: Path,
    merge: bool,
) -> None:
    """Load (``merge`` False: a resumed checkpoint) or add (a shard) a ``capture`` into the pass."""
    try:
        for t in tracked:
            sid = t.source.source_id
            acc = _part(tensors, f"{sid}/acc/")
            t.acc.merge(acc) if merge else t.acc.load_state(acc)
            if t.attention is not None:
                heads = _part(tensors, f"{sid}/attention/")
                t.attention.merge(heads) if merge else t.attention.load_state(heads)
            if t.bridge is not None:
                for name in ("attribution", "strong"):
                    mine: ExactSum = getattr(t.bridge, name)
                    theirs = ExactSum(mine.shape, mine.limbs.device, mine.low, mine.limbs.shape[0])
                    theirs.load(tensors[f"{sid}/bridge/{name}"])
                    if not merge:
                        mine.load(theirs.state())
                    else:
                        mine.merge(theirs)
        if contexts is not None:
            contexts.merge(_part(tensors, "contexts/"))  # a fresh Contexts: loading is merging
        sequences.extend({k: tensors[f"sequences/{k}"].numpy() for k in SEQUENCE_COLUMNS})
    except (KeyError, ValueError, RuntimeError) as e:
        raise NeurodashError(f"{path}: a pass state that does not fit this run ({_short(e)})") from e


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def _part(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not part:
        raise KeyError(prefix.rstrip("/"))
    return part


_PACKED = "#"  # ``{name}#planes``, ``#bytes``, ``#shape``, ``#sign``: an int64 tensor packed (``pack``)
_INT64_MIN = -(2**63)


def pack(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors as written to a file: each int64 tensor (exact sums' limbs, counts, positions)
    without its bytes that are zero everywhere, losslessly (``unpack``); the rest as they are."""
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        out |= _pack_int64(name, t) if t.dtype == torch.int64 and t.numel() >= 64 else {name: t}
    return out


def _pack_int64(name: str, t: Tensor) -> dict[str, Tensor]:
    """Sign and magnitude; the magnitude as byte planes (byte ``b`` of every element, little-endian),
    per leading index where the first dimension is short (an exact sum's limbs fill different
    bytes), keeping only the planes with a non-zero byte."""
    groups = t.shape[0] if t.ndim >= 2 and t.shape[0] <= 8 else 1
    flat = t.numpy().reshape(groups, -1)
    if bool((flat == _INT64_MIN).any()):  # no magnitude in an int64: kept as it is
        return {name: t}
    magnitude = np.abs(flat).astype("<i8", copy=False)
    as_bytes = magnitude.view(np.uint8).reshape(groups, -1, 8)
    used = np.bitwise_or.reduce(magnitude, axis=1) if magnitude.shape[1] else np.zeros(groups, np.int64)
    kept = np.array([[(int(u) >> (8 * b)) & 0xFF != 0 for b in range(8)] for u in used], dtype=np.uint8)
    planes = [as_bytes[g, :, b] for g, b in zip(*kept.nonzero())]
    out = {
        f"{name}{_PACKED}planes": torch.from_numpy(
            np.stack(planes) if planes else np.zeros((0, flat.shape[1]), np.uint8)
        ),
        f"{name}{_PACKED}bytes": torch.from_numpy(kept),
        f"{name}{_PACKED}shape": torch.tensor(t.shape, dtype=torch.int64),
    }
    negative = flat < 0
    if negative.any():
        out[f"{name}{_PACKED}sign"] = torch.from_numpy(np.packbits(negative.reshape(-1)))
    return out


def unpack(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``pack``'s tensors back as they were (a file without packed tensors comes back unchanged)."""
    out = {k: v for k, v in tensors.items() if _PACKED not in k}
    for name in {k.split(_PACKED)[0] for k in tensors if k.endswith(f"{_PACKED}planes")}:
        out[name] = _unpack_int64(tensors, name)
    return out


def _unpack_int64(tensors: dict[str, Tensor], name: str) -> Tensor:
    planes = tensors[f"{name}{_PACKED}planes"].numpy()
    kept = tensors[f"{name}{_PACKED}bytes"].numpy()
    shape = tuple(int(n) for n in tensors[f"{name}{_PACKED}shape"].tolist())
    groups = kept.shape[0]
    n = int(np.prod(shape)) // groups
    as_bytes = np.zeros((groups, n, 8), dtype=np.uint8)
    for plane, g, b in zip(planes, *kept.nonzero()):
        as_bytes[g, :, b] = plane
    values = as_bytes.view("<i8").reshape(groups, n).astype(np.int64, copy=False)
    sign = tensors.get(f"{name}{_PACKED}sign")
    if sign is not None:
        negative = np.unpackbits(sign.numpy(), count=groups * n).astype(bool).reshape(groups, n)
        values = np.where(negative, -values, values)
    return torch.from_numpy(np.ascontiguousarray(values).reshape(shape))


def save(path: Path, header: StateHeader, tensors: dict[str, Tensor]) -> Path:
    """Write atomically (``pack``ed): a temporary file beside ``path``, synced, then renamed over it."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(pack(tensors), str(tmp), {"header": header.to_json()})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def to_bytes(header: StateHeader, tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save(pack(tensors), {"header": header.to_json()})


def from_bytes(data: bytes, name: str) -> tuple[StateHeader, dict[str, Tensor]]:
    from safetensors.torch import load

    header = _header_of_bytes(data, Path(name))
    return header, unpack(load(data))


def read_header(path: Path) -> StateHeader:
    """The header alone (the tensors are not read)."""
    from safetensors import safe_open

    if not path.is_file():
        raise NeurodashError(f"{path}: no such pass state")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise NeurodashError(f"{path}: not a neurodash pass state ({_short(e)})") from e
    return StateHeader.from_json(metadata.get("header", ""), path)


def load(path: Path) -> tuple[StateHeader, dict[str, Tensor]]:
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        return header, unpack(load_file(str(path)))
    except Exception as e:
        raise NeurodashError(f"{path}: a damaged pass state ({_short(e)})") from e


def _header_of_bytes(data: bytes, path: Path) -> StateHeader:
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return StateHeader.from_json(meta.get("header", ""), path)


def check_together(headers: list[tuple[Path, StateHeader]]) -> None:
    """Refuse, in one line, states that are not the complete shards of one run."""
    (first_path, first), *rest = headers
    for path, h in headers:
        if not h.complete:
            raise NeurodashError(f"{path}: an unfinished shard (a checkpoint): finish it with --resume first")
    for path, h in rest:
        for what, a, b in (
            ("model", first.config["model"], h.config["model"]),
            ("corpus", _corpus(first.config), _corpus(h.config)),
            ("shard count", first.shard.count, h.shard.count),
        ):
            if a != b:
                raise NeurodashError(f"{path} and {first_path} are not shards of one run: {what} {b} vs {a}")
        if h.config != first.config:
            name = next(k for k in first.config if first.config[k] != h.config.get(k))
            raise NeurodashError(
                f"{path} and {first_path} are not shards of one run: their settings differ ({name})"
            )
    seen: dict[int, Path] = {}
    for path, h in headers:
        if h.shard.index in seen:
            raise NeurodashError(f"{path} and {seen[h.shard.index]} are both shard {h.shard}")
        seen[h.shard.index] = path
    missing = [i for i in range(first.shard.count) if i not in seen]
    if missing:
        raise NeurodashError(
            f"shard {missing[0]}/{first.shard.count} is missing ({len(missing)} of {first.shard.count} missing)"
        )


def _corpus(config: dict) -> str:
    return f"{config['dataset']} ({config['split']}, tokens {config['tokens']}, seed {config['sample_seed']})"
