"""Corpora: the embedded ``python-docs``, local files and hub datasets, sampled (``corpus_documents``)
and packed into token windows (``pack_windows``).

A pass reads a sample of the corpus that represents all of it, not its first documents:

- local files and cached datasets: documents are cut into pieces of about ``PIECE_CHARS`` characters
  (at a line break or a space where one is near), and the pieces of all documents are read in a
  seeded random order, so that even a few long documents (six books) are sampled throughout;
- streamed hub datasets: ``datasets``' shuffle buffer of ``SHUFFLE_BUFFER`` documents, seeded;
- the embedded ``python-docs``: its documents in a seeded random order (seed 0: the order it had
  before sampling existed).

Without shuffling, documents are read whole and in the corpus's order.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import math
import random
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neurodash.config import DEFAULT_DATASET
from neurodash.errors import NeurodashError
from precompute.hub import hub_reachable, looks_like_path

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}
PIECE_CHARS = 2048  # local documents are sampled in pieces of about this many characters (~4 windows)
SHUFFLE_BUFFER = 10_000  # documents in the shuffle buffer of a streamed hub dataset


def python_docs(seed: int | None = 0) -> Iterator[dict]:
    """Python's own documentation: the pydoc topics and every stdlib module's docstrings.

    Read from the interpreter's files (never imported), lazily, in the order ``seed`` shuffles them
    to (None: topics, then modules, sorted), so a short run parses only the files it reads.
    """
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = [
        p for p in sorted(stdlib.rglob("*.py")) if not _SKIP_DIRS & set(p.relative_to(stdlib).parts[:-1])
    ]
    docs: list[str | Path] = [*sorted(topics), *modules]
    if seed is not None:
        random.Random(seed).shuffle(docs)
    for doc in docs:
        if isinstance(doc, str):
            yield {"text": topics[doc], "source": f"pydoc:{doc}"}
        elif text := _docstrings(doc):
            yield {"text": text, "source": f"stdlib:{doc.relative_to(stdlib)}"}


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and not (parts and node is tree):
                name = getattr(node, "name", path.stem)
                parts.append(f"{name}: {doc}" if name != path.stem else doc)
    return "\n\n".join(dict.fromkeys(parts))


def load_corpus(name: str = DEFAULT_DATASET, split: str = "train", text_column: str = "text"):
    """A ``datasets`` dataset (or iterable dataset) with the text in ``text_column``."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(name).expanduser()
    if name == DEFAULT_DATASET:
        # its columns declared: checking the text column reads no document
        columns = datasets.Features({"text": datasets.Value("string"), "source": datasets.Value("string")})
        ds = datasets.IterableDataset.from_generator(python_docs, features=columns)
    elif path.exists():
        ds = _load_local(path, split, text_column)
    elif looks_like_path(name):
        raise NeurodashError(f"--dataset {name}: no such file or folder")
    else:
        ds = _load_hub(name, split)
    columns = ds.column_names or list(next(iter(ds)).keys())
    if text_column not in columns:
        raise NeurodashError(
            f"dataset {name!r} has no text column {text_column!r} (columns: {', '.join(columns)}); "
            "choose one with --text-column"
        )
    return ds


def _load_hub(name: str, split: str):
    import datasets

    online = hub_reachable()
    try:
        return datasets.load_dataset(name, split=split, streaming=online)
    except Exception as e:  # the hub raises many types; all mean "cannot get it"
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not online:
            why = "it is not cached and the Hugging Face hub is not reachable from here"
        raise NeurodashError(
            f"cannot load dataset {name!r}: {why}. "
            f"Use the embedded {DEFAULT_DATASET!r}, a local .txt/.jsonl/.parquet file or folder, "
            "or a hub dataset where the hub is reachable"
        ) from None


@dataclass(frozen=True)
class Documents:
    """A corpus's documents as rows ``{text_column: text}``, in the order a pass reads them; iterable
    again from the start each time."""

    rows: Callable[[], Iterator[dict]]

    def __iter__(self) -> Iterator[dict]:
        return self.rows()


def corpus_documents(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    text_column: str = "text",
    shuffle: bool = True,
    seed: int = 0,
) -> tuple[Iterable, dict[str, object]]:
    """The documents a pass reads (see the module docstring) and how they were sampled: a dict with
    the ``method`` and its settings, for the store's config."""
    import datasets

    ds = load_corpus(name, split, text_column)  # checks the name and the text column
    if name == DEFAULT_DATASET:
        order = seed if shuffle else None
        sampling: dict[str, object] = {"method": "shuffled documents", "seed": seed}
        if not shuffle:
            sampling = {"method": "in order"}
        return Documents(lambda: python_docs(order)), sampling
    if not shuffle:
        return ds, {"method": "in order"}
    if isinstance(ds, datasets.IterableDataset):
        sampling = {"method": "shuffle buffer", "seed": seed, "buffer_size": SHUFFLE_BUFFER}
        return ds.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER), sampling
    sampling = {"method": "shuffled pieces", "seed": seed, "piece_chars": PIECE_CHARS}
    return Documents(lambda: shuffled_pieces(ds, text_column, seed)), sampling


def shuffled_pieces(ds, text_column: str, seed: int, piece_chars: int = PIECE_CHARS) -> Iterator[dict]:
    """Every document of a map-style dataset cut into pieces of about ``piece_chars`` characters
    (``piece_bounds``), all pieces in the random order ``seed`` draws."""
    import pyarrow.compute as pc

    texts = ds.data.column(text_column)
    chars = pc.utf8_length(texts.cast("string"))  # pyright: ignore[reportAttributeAccessIssue]  # generated at import, not in the stubs
    lengths = pc.fill_null(chars, 0).to_numpy(zero_copy_only=False)
    n_pieces = np.maximum(1, -(-lengths // piece_chars)).astype(np.int64)
    doc_of = np.repeat(np.arange(len(lengths)), n_pieces)
    piece_of = np.arange(len(doc_of)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    for i in np.random.default_rng(seed).permutation(len(doc_of)):
        text = ds[int(doc_of[i])][text_column] or ""
        start, end = piece_bounds(text, int(piece_of[i]), piece_chars)
        yield {text_column: text[start:end]}


def piece_bounds(text: str, i: int, piece_chars: int) -> tuple[int, int]:
    """Where piece ``i`` of ``text`` starts and ends: cut after the first line break (else space) in
    the half-piece from ``i * piece_chars``, or right there if there is none. The pieces partition
    the text."""

    def cut(j: int) -> int:
        at = j * piece_chars
        if j == 0 or at >= len(text):
            return min(at, len(text))
        for sep in ("\n", " "):
            found = text.find(sep, at, at + math.ceil(piece_chars / 2))
            if found >= 0:
                return found + 1
        return at

    return cut(i), cut(i + 1)


def _load_local(path: Path, split: str, text_column: str):
    import datasets

    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_BUILDERS) if path.is_dir() else [path]
    if not files:
        raise NeurodashError(f"{path} holds no .txt, .jsonl or .parquet files")
    builders = {LOCAL_BUILDERS[p.suffix] for p in files if p.suffix in LOCAL_BUILDERS}
    if len(builders) != 1 or any(p.suffix not in LOCAL_BUILDERS for p in files):
        raise NeurodashError(
            f"{path}: use files of one kind, .txt, .jsonl or .parquet (got {sorted(p.suffix for p in files)})"
        )
    builder = builders.pop()
    files = [p for p in files if p.stat().st_size > 0]  # an empty file adds nothing (and trips datasets)
    if not files:
        raise NeurodashError(
            f"the corpus {path} is empty: {'its files are' if path.is_dir() else 'it is'} 0 bytes"
        )
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it logs its reader's error; ours, below, names the line
    try:
        if builder == "text":
            ds = datasets.load_dataset(
                builder, data_files=[str(p) for p in files], split="train", sample_by="document"
            )
        else:
            ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as e:
        why = _first_flaw(files, builder, text_column) or _first_line(e)
        raise NeurodashError(f"cannot read corpus {why}") from None
    finally:
        logger.setLevel(level)
    if text_column in ds.column_names and not _holds_text(ds.features[text_column]):
        why = _first_flaw(files, builder, text_column)
        if why is None:
            feature = ds.features[text_column]
            holds = "null in every row" if getattr(feature, "dtype", None) == "null" else f"{feature}"
            why = f"{path}: its column {text_column!r} holds {holds}, not text"
        raise NeurodashError(f"cannot read corpus {why}")
    return ds


def _first_line(e: BaseException) -> str:
    """The first line of ``e``, or of the error that caused it (datasets wraps the reader's error)."""
    for error in (e.__cause__, e):
        if error is not None and str(error).strip():
            return str(error).strip().splitlines()[0]
    return type(e).__name__


def _holds_text(feature) -> bool:
    """A column of strings (a null in some rows is fine: an empty document)."""
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _first_flaw(files: list[Path], builder: str, text_column: str) -> str | None:
    """``FILE line N: what is wrong`` for the first line of ``files`` that cannot be read as text,
    JSON or a row with text in ``text_column``; None where every line is fine (or for Parquet)."""
    if builder not in ("text", "json"):
        return None
    for path in files:
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                flaw = _line_flaw(line, builder, text_column)
                if flaw:
                    return f"{path} line {n}: {flaw}"
    return None


def _line_flaw(line: bytes, builder: str, text_column: str) -> str | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}: a binary file?)"
    if "\x00" in text:
        return "not text (it holds a NUL byte: a binary file?)"
    if builder == "text" or not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object with a {text_column!r} field"
    value = row.get(text_column)
    if value is not None and not isinstance(value, str):
        return f"its {text_column!r} is {_json_kind(value)}, not a string"
    return None


def _json_kind(value) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


@dataclass
class Batch:
    seq_ids: Tensor  # [batch]
    tokens: Tensor  # [batch, ctx]
    doc_ids: Tensor  # [batch]
    starts: Tensor  # [batch]: offset in its document of the window's first corpus token


def pack_windows(
    dataset,
    tokenizer,
    ctx: int,
    batch_size: int,
    text_column: str = "text",
    max_tokens: int | None = None,
    skip_tokens: int = 0,
) -> Iterator[Batch]:
    """Tokenize documents and pack them into windows of ``ctx`` tokens, each starting with BOS.

    Documents are joined with EOS (BOS if there is none) as a separator; a window's first token
    is BOS (when the tokenizer has one), the rest come from the stream. The last partial window
    is dropped. ``skip_tokens`` passes over the windows that ``max_tokens=skip_tokens`` would
    read (``skip_tokens // ctx``): the windows after them follow on in the stream, disjoint from
    them, and keep their place in it as ``seq_id``.
    """
    bos = tokenizer.bos_token_id
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    body = ctx - (bos is not None)
    if body < 1:
        raise NeurodashError(f"--ctx {ctx} is too short")
    skipped = skip_tokens // ctx
    max_windows = None if max_tokens is None else max(1, max_tokens // ctx)
    stream = _token_stream(dataset, tokenizer, text_column, separator)
    windows = _windows(stream, body, bos)
    seq_id = skipped
    stop = None if max_windows is None else skipped + max_windows
    for chunk in _chunks(itertools.islice(windows, skipped, stop), batch_size):
        ids, docs, starts = zip(*chunk)
        n = len(ids)
        yield Batch(
            seq_ids=torch.arange(seq_id, seq_id + n),
            tokens=torch.tensor(ids, dtype=torch.long),
            doc_ids=torch.tensor(docs),
            starts=torch.tensor(starts),
        )
        seq_id += n
    if seq_id == skipped and skipped:
        raise NeurodashError(
            f"the corpus holds no window of --ctx {ctx} tokens after the {skipped * ctx:,} tokens "
            f"--skip-tokens {skip_tokens:,} passes over"
        )
    if seq_id == 0:
        raise NeurodashError(
            f"the corpus is shorter than one window of --ctx {ctx} tokens"
            if _nonempty(dataset, text_column)
            else "the corpus is empty: no text in its documents"
        )


def _token_stream(
    dataset, tokenizer, text_column: str, separator: int | None
) -> Iterator[tuple[int, int, int]]:
    """(token, doc_id, offset in doc) for the whole corpus, ``separator`` between documents."""
    doc_id = 0
    for rows in _chunks(iter(dataset), 64):
        texts = [_text(r[text_column], doc_id + i, text_column) for i, r in enumerate(rows)]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            if not ids:
                doc_id += 1
                continue
            if separator is not None and doc_id > 0:
                yield separator, doc_id, -1
            for offset, t in enumerate(ids):
                yield t, doc_id, offset
            doc_id += 1


def _text(value, row: int, text_column: str) -> str:
    """A document's text: a null is an empty document; anything else but a string is refused."""
    if value is None or isinstance(value, str):
        return value or ""
    raise NeurodashError(
        f"the corpus's row {row + 1} has {_json_kind(value)} in its {text_column!r}, not text"
    )


def _windows(stream, body: int, bos: int | None) -> Iterator[tuple[list[int], int, int]]:
    prefix = [bos] if bos is not None else []
    while True:
        piece = list(itertools.islice(stream, body))
        if len(piece) < body:
            return
        first = next((p for p in piece if p[2] >= 0), piece[0])
        yield prefix + [p[0] for p in piece], first[1], max(first[2], 0)


def _chunks(it, n: int):
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _nonempty(dataset, text_column: str) -> bool:
    return any((r[text_column] or "").strip() for r in itertools.islice(iter(dataset), 1000))
