"""Search by meaning: the ``embeddings`` table of the explanations file beside a store
(``demo.duckdb`` -> ``demo.explanations.duckdb``, ``schema.EXPLANATIONS``), and what is embedded.

Each unit has up to one vector per kind of text: ``examples`` (its strongest examples, as text) and
``explanation`` (its best-scored explanation, from the ``explanations`` table that ``neurodash
explain`` writes). A query vector is compared with every stored vector by DuckDB's
``array_cosine_similarity``; a unit ranks by its best-matching text. As with the other app-owned
files, every call opens the file, works in one transaction and closes it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from neurodash import paths
from neurodash.storage import owned
from neurodash.storage.connect import connect
from neurodash.storage.reader import Store
from neurodash.storage.schema import EMBEDDING_DIM, EXPLANATIONS
from neurodash.units import UnitRef

EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # the ``model`` of the vectors ``precompute.embed`` makes
EXAMPLES = "examples"  # text kinds
EXPLANATION = "explanation"
TEXT_KINDS = (EXAMPLES, EXPLANATION)


@dataclass(frozen=True)
class Snippet:
    """One top example around its peak: the peak token and a little text either side."""

    token: str
    before: str
    after: str


@dataclass(frozen=True)
class UnitText:
    """A text that stands for a unit: its ``kind`` is ``EXAMPLES`` or ``EXPLANATION``."""

    ref: UnitRef
    kind: str
    text: str


@dataclass(frozen=True)
class MeaningHit:
    """A unit found by meaning: its best-matching text and how similar (cosine, -1..1), with its best
    explanation and that explanation's score (correlation) where it has one."""

    ref: UnitRef
    similarity: float
    text_kind: str
    text: str
    explanation: str | None = None
    correlation: float | None = None


def explanations_path(store_path: str | os.PathLike) -> Path:
    """The explanations file beside a store: ``demo.duckdb`` -> ``demo.explanations.duckdb``."""
    return paths.beside(store_path, "explanations")


def top_snippets(
    store: Store, n_examples: int, before: int, after: int, source_ids: Sequence[str] | None = None
) -> dict[UnitRef, list[Snippet]]:
    """Each unit's ``n_examples`` strongest examples (``top`` bucket, by rank) as snippets: the peak token
    with up to ``before`` tokens before it and ``after`` after it, within the stored window."""
    where = "" if source_ids is None else "AND e.source_id IN (SELECT unnest(?::VARCHAR[]))"
    rows = store.sql(
        "SELECT e.source_id, e.unit, "
        f"list_slice(s.token_ids, greatest(e.start, e.pos - {int(before)}) + 1, e.pos) AS before, "
        "s.token_ids[e.pos + 1] AS peak, "
        f"list_slice(s.token_ids, e.pos + 2, least(e.start + len(e.acts), e.pos + 1 + {int(after)})) AS after "
        "FROM examples e JOIN sequences s USING (seq_id) "
        f"WHERE e.bucket = 'top' AND e.rank < ? {where} ORDER BY e.source_id, e.unit, e.rank",
        [n_examples] + ([list(source_ids)] if source_ids is not None else []),
    ).fetchall()
    vocab = store.vocab
    found: dict[UnitRef, list[Snippet]] = {}
    for source_id, unit, before_ids, peak, after_ids in rows:
        snippet = Snippet(
            vocab[peak], "".join(vocab[i] for i in before_ids), "".join(vocab[i] for i in after_ids)
        )
        found.setdefault(UnitRef(source_id, unit), []).append(snippet)
    return found


class Embeddings(owned.OwnedFile):
    """The vectors of one store's units, in the explanations file ``path``."""

    kind = "explanations"
    schema = EXPLANATIONS

    def explanation_texts(self) -> list[UnitText]:
        """Each explained unit's best explanation (the highest correlation of its explainers')."""
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT source_id, unit, arg_max(explanation, coalesce(correlation, -2)) FROM explanations "
                "WHERE coalesce(explanation, '') <> '' GROUP BY source_id, unit ORDER BY source_id, unit"
            ).fetchall()
        return [UnitText(UnitRef(s, u), EXPLANATION, text) for s, u, text in rows]

    def stored_texts(self, model: str) -> dict[tuple[UnitRef, str], str]:
        """The text behind each vector of ``model``, by (unit, text kind)."""
        if not self.path.exists():
            return {}
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT source_id, unit, text_kind, text FROM embeddings WHERE model = ?", [model]
            ).fetchall()
        return {(UnitRef(s, u), kind): text for s, u, kind, text in rows}

    def count(self, model: str) -> int:
        """How many vectors of ``model`` there are (0 for a file not made yet)."""
        if not self.path.exists():
            return 0
        with self._connect(read_only=True) as con:
            return con.execute("SELECT count(*) FROM embeddings WHERE model = ?", [model]).fetchall()[0][0]

    def save(self, texts: Sequence[UnitText], vectors: np.ndarray, model: str) -> None:
        """Keep ``vectors[i]`` (of ``model``) for ``texts[i]``, replacing what a unit had for that kind."""
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        if not texts:
            return
        table = pa.table(
            {
                "source_id": [t.ref.source_id for t in texts],
                "unit": pa.array([t.ref.unit for t in texts], pa.int32()),
                "text_kind": [t.kind for t in texts],
                "model": [model] * len(texts),
                "text": [t.text for t in texts],
                "vector": _vector_array(vectors),
            }
        )
        with self._connect() as con:
            con.register("_nd_vectors", table)
            con.execute(
                "DELETE FROM embeddings WHERE (source_id, unit, text_kind) IN "
                "(SELECT (source_id, unit, text_kind) FROM _nd_vectors)"
            )
            con.execute(
                f"INSERT INTO embeddings SELECT source_id, unit, text_kind, model, text, vector::FLOAT[{EMBEDDING_DIM}] FROM _nd_vectors"
            )
            con.unregister("_nd_vectors")

    def search(self, vector: np.ndarray, model: str, limit: int = 20) -> list[MeaningHit]:
        """The ``limit`` units whose texts are nearest ``vector`` (cosine), best first; each with its
        best-matching text and its best explanation. Opens the file: the app and the CLI search a
        ``SearchIndex`` instead."""
        with self._connect(read_only=True) as con:
            return EmbeddingsReader(con).search(vector, model, limit)


class SearchIndex:
    """The explanations file's vectors and explanations, copied into an in-memory DuckDB database and
    searched there with the same query: a search neither opens the file (which costs more than the
    search) nor holds it open (``neurodash embed`` or ``explain`` may write it meanwhile). The copy
    is made again when the file has changed (``owned.version``). Safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._version: tuple | None = None
        self._con: duckdb.DuckDBPyConnection | None = None

    def reader(self) -> EmbeddingsReader:
        """A reader of the copy as the file is now (a cursor of its own, for this thread)."""
        with self._lock:
            version = owned.version(self.path)
            if self._con is None or version != self._version:
                self._con = self._copy()
                self._version = version
            return EmbeddingsReader(self._con.cursor())

    def _copy(self) -> duckdb.DuckDBPyConnection:
        memory = connect(Path(":memory:"))
        if self.path.exists():
            with owned.transaction(self.path, EXPLANATIONS, owned.BUSY_TIMEOUT_S, read_only=True) as con:
                tables = {t: con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in EXPLANATIONS.tables}
        else:
            tables = {}
        for name in EXPLANATIONS.tables:
            memory.execute(_ddl(name))
            if name in tables:
                memory.register("_nd_copy", tables[name])
                memory.execute(f"INSERT INTO {name} SELECT * FROM _nd_copy")
                memory.unregister("_nd_copy")
        return memory


def _ddl(table: str) -> str:
    """The ``CREATE TABLE`` of one of the explanations file's tables, from its schema."""
    statements = [s.strip() for s in EXPLANATIONS.ddl.split(";")]
    return next(s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} "))


class EmbeddingsReader:
    """Queries on an open connection to the explanations file or its in-memory copy."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def count(self, model: str) -> int:
        return self._con.execute("SELECT count(*) FROM embeddings WHERE model = ?", [model]).fetchall()[0][0]

    def search(self, vector: np.ndarray, model: str, limit: int = 20) -> list[MeaningHit]:
        """See ``Embeddings.search``."""
        rows = self._con.execute(
            _SEARCH, [np.asarray(vector, dtype=np.float32).tolist(), model, int(limit)]
        ).fetchall()
        return [
            MeaningHit(UnitRef(s, u), float(sim), kind, text, explanation, corr)
            for s, u, kind, text, sim, explanation, corr in rows
        ]


# Each unit's best text by cosine similarity, the best units first; then their best explanation. A
# unit has at most one row per text kind, so the best ``$3 * len(TEXT_KINDS)`` rows hold the best $3
# units: a top-N of rows (no grouping of every row) before the texts and explanations are joined.
_SEARCH = f"""
WITH rows AS (
    SELECT source_id, unit, text_kind, array_cosine_similarity(vector, $1::FLOAT[{EMBEDDING_DIM}]) AS sim
    FROM embeddings WHERE model = $2 ORDER BY sim DESC LIMIT $3 * {len(TEXT_KINDS)}),
nearest AS (
    SELECT source_id, unit, arg_max(text_kind, sim) AS text_kind, max(sim) AS sim
    FROM rows GROUP BY source_id, unit ORDER BY sim DESC LIMIT $3),
best AS (
    SELECT source_id, unit, arg_max(explanation, coalesce(correlation, -2)) AS explanation,
           max(correlation) AS correlation
    FROM explanations WHERE (source_id, unit) IN (SELECT (source_id, unit) FROM nearest)
    GROUP BY source_id, unit)
SELECT n.source_id, n.unit, n.text_kind, e.text, n.sim, b.explanation, b.correlation
FROM nearest n JOIN embeddings e USING (source_id, unit, text_kind) LEFT JOIN best b USING (source_id, unit)
WHERE e.model = $2 ORDER BY n.sim DESC, n.source_id, n.unit
"""


def _vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), EMBEDDING_DIM)
