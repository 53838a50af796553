"""Search by meaning: find units by what a query in words means ("closing brackets", "numbers in a
list"), across every source of a store.

Every unit gets a text or two, embedded once by a small sentence-embedding model (all-MiniLM-L6-v2,
``precompute.embed``) into the explanations file beside the store:

- ``examples``: its strongest examples written as a person would sum them up: the tokens it peaks
  on, most often first, what kind of token each is where its text does not say ("right
  parenthesis", "number", "newline"), and a few peaks in a little context;
- ``explanation``: its best-scored explanation, once ``neurodash explain`` has written one.

A query is embedded by the same model (loaded once per process) and compared with every vector in
DuckDB; a unit ranks by its best-matching text.

    from neurodash.meaning import embed_store, search_by_meaning
    embed_store("demo.duckdb")                      # once: `neurodash embed demo.duckdb`
    for hit in search_by_meaning("demo.duckdb", "closing brackets"):
        print(hit.ref, hit.similarity, hit.explanation)
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.storage.embeddings import (
    EMBEDDING_MODEL,
    EXAMPLES,
    Embeddings,
    MeaningHit,
    SearchIndex,
    Snippet,
    UnitText,
    top_snippets,
)

__all__ = ["EmbedReport", "MeaningHit", "embed_store", "examples_text", "has_embeddings", "search_by_meaning"]

# What an examples text holds: short, as the embedding's cost grows with its length (these make ~49
# word pieces where 6 tokens before and 4 contexts made ~71: 1.6x the texts per CPU second).
N_EXAMPLES = 8  # top examples per unit that its examples text sums up
N_CONTEXTS = 3  # distinct contexts shown, strongest first
BEFORE, AFTER = 3, 1  # context tokens either side of a peak
N_TOKENS = 5  # distinct peak tokens named
LIMIT = 20
CHUNK = 2048  # texts embedded and saved at a time: an interrupted run keeps what it finished

_INDEXES: dict[Path, SearchIndex] = {}  # search_index's, by resolved path
_INDEXES_LOCK = threading.Lock()


@dataclass(frozen=True)
class EmbedReport:
    """What ``embed_store`` did: texts embedded now, texts already embedded (unchanged), seconds."""

    embedded: int
    unchanged: int
    seconds: float
    path: Path


def embed_command(store_path: str | os.PathLike) -> str:
    return f"neurodash embed {store_path}"


def search_by_meaning(
    store_path: str | os.PathLike, query: str, limit: int = LIMIT, path: str | os.PathLike | None = None
) -> list[MeaningHit]:
    """The ``limit`` units of the store whose texts mean most nearly ``query``, best first. A
    ``NeurodashError`` for an empty query or a store whose units are not embedded yet. Searches an
    in-memory copy of the explanations file (``SearchIndex``), made again when the file changes."""
    if not query or not query.strip():
        raise NeurodashError('the query is empty: say what to look for, e.g. "closing brackets"')
    if not Path(store_path).is_file():
        Store(store_path).close()  # the store's own one-line message
    embeddings = Embeddings.beside(store_path, path)
    reader = search_index(embeddings.path).reader()
    if reader.count(EMBEDDING_MODEL) == 0:
        _no_embeddings(store_path, embeddings)
    from precompute.embed import cached_embedder

    return reader.search(cached_embedder().embed_one(query.strip()), EMBEDDING_MODEL, limit)


def search_index(path: Path) -> SearchIndex:
    """The in-memory copy of an explanations file, one per file in this process."""
    key = path.resolve()
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = SearchIndex(path)
        return _INDEXES[key]


def has_embeddings(store_path: str | os.PathLike, path: str | os.PathLike | None = None) -> bool:
    """Whether the store's units are embedded (a search by meaning can run); reads (and makes, the
    first time) the in-memory copy that the search reads."""
    return search_index(Embeddings.beside(store_path, path).path).reader().count(EMBEDDING_MODEL) > 0


def _no_embeddings(store_path: str | os.PathLike, embeddings: Embeddings) -> NoReturn:
    """Refuse a search, saying how to make the embeddings (or that the store is missing)."""
    embeddings.check()  # a file of another kind, or a missing folder, is named as such
    raise NeurodashError(
        f"{store_path} has no embeddings for search by meaning: make them with `{embed_command(store_path)}`"
    )


def embed_store(
    store_path: str | os.PathLike,
    sources: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed every unit's examples text, and the explanation of every explained unit, into the
    explanations file beside the store (or ``path``). Texts already embedded as they are now are
    kept; ``progress(done, total)`` follows the texts embedded."""
    import time

    from precompute.embed import bulk_threads, cached_embedder, torch_threads

    started = time.perf_counter()
    embeddings = Embeddings.beside(store_path, path).check()
    with Store(store_path) as store:
        known = set(sources or ())
        unknown = known - {s.source_id for s in store.sources()}
        if unknown:
            raise NeurodashError(f"no source {sorted(unknown)[0]!r} in {store_path}")
        texts = examples_texts(store, sorted(known) if sources else None)
    texts += [t for t in embeddings.explanation_texts() if not sources or t.ref.source_id in known]
    stored = embeddings.stored_texts(EMBEDDING_MODEL)
    todo = [t for t in texts if stored.get((t.ref, t.kind)) != t.text]
    done = 0

    def batch_done(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(todo))

    batch_done(0)
    if todo:  # else no model to load
        embedder = cached_embedder()
        with torch_threads(bulk_threads()):
            for first in range(0, len(todo), CHUNK):
                chunk = todo[first : first + CHUNK]
                vectors = embedder.embed([t.text for t in chunk], progress=batch_done)
                embeddings.save(chunk, vectors, EMBEDDING_MODEL)
    return EmbedReport(len(todo), len(texts) - len(todo), time.perf_counter() - started, embeddings.path)


def examples_texts(store: Store, source_ids: Sequence[str] | None = None) -> list[UnitText]:
    """Every unit's examples text (units without top examples have none)."""
    snippets = top_snippets(store, N_EXAMPLES, BEFORE, AFTER, source_ids)
    return [UnitText(ref, EXAMPLES, examples_text(found)) for ref, found in snippets.items()]


def examples_text(snippets: Sequence[Snippet]) -> str:
    """A unit's strongest examples as one line of text, e.g.
    ``fires on ")" (right parenthesis), "]" (right square bracket) · in: print(x)` … a[1]``.
    Peak tokens by how often they are the peak; contexts with the peak token marked by backticks."""
    counts = Counter(s.token.strip() or s.token for s in snippets)
    named = list(dict.fromkeys(_token_phrase(token) for token, _ in counts.most_common()))[:N_TOKENS]
    contexts = list(dict.fromkeys(_context(s) for s in snippets))[:N_CONTEXTS]
    return f"fires on {', '.join(named)} · in: {' … '.join(contexts)}"


def _token_phrase(token: str) -> str:
    """``"6" (number)``, ``")" (right parenthesis)``, ``"import"``: a token and, where its text does
    not say, what it is."""
    kind = token_kind(token)
    shown = token.strip() or kind
    return f'"{shown}" ({kind})' if kind and kind != shown else f'"{shown}"'


def token_kind(token: str) -> str | None:
    """What kind of token this is in words, where its text alone does not say: whitespace and
    punctuation by name, digits as a number; None for a word."""
    stripped = token.strip()
    if not stripped:
        return "newline" if "\n" in token else "tab" if "\t" in token else "space"
    if stripped.isdigit():
        return "number"
    if any(c.isalnum() for c in stripped):
        return None
    names = dict.fromkeys(unicodedata.name(c, "symbol").lower() for c in stripped)
    return " ".join(list(names)[:3])


def _context(s: Snippet) -> str:
    text = f"{s.before}`{s.token}`{s.after}"
    return " ".join(text.split())  # newlines and runs of spaces as one space
