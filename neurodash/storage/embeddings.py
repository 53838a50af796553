"""Search by meaning: the ``embeddings`` table of the explanations file beside a store
(``demo.duckdb`` -> ``demo.explanations.duckdb``, ``schema.EXPLANATIONS``), and what is embedded.

Each unit has up to one vector per kind of text: ``examples`` (its strongest examples, as text) and
``explanation`` (its best-scored explanation, from the ``explanations`` table that ``neurodash
explain`` writes). The vectors are unit vectors (normalised again as they are written), so their
inner product with a unit query vector is the cosine similarity; a unit ranks by its best-matching
text. As with the other app-owned files, every call opens the file, works in one transaction and
closes it.

Two scans give the same ranking: DuckDB's ``array_inner_product`` over the file (``Embeddings.search``),
and, in the app and the CLI, one matrix product over an in-memory copy of the vectors
(``SearchIndex``): on the demo store's ~56k vectors the latter takes ~30 ms where DuckDB's function
took ~190 ms, too much of a 200 ms budget; DuckDB joins the nearest rows with their texts and
explanations either way.
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
                "vector": _vector_array(unit_vectors(vectors)),
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
        """The ``limit`` units whose texts are nearest ``vector`` (cosine), best first;
        each with its best-matching text and its best explanation. Opens the file, scans it with
        DuckDB: the app and the CLI search a ``SearchIndex`` instead."""
        with self._connect(read_only=True) as con:
            return EmbeddingsReader(con).search(vector, model, limit)


class SearchIndex:
    """The explanations file copied into memory: its texts and explanations into an in-memory DuckDB
    database, its vectors into one matrix per model. A search neither opens the file (which costs
    more than the search) nor holds it open (``neurodash embed`` or ``explain`` may write it
    meanwhile). The copy is made again when the file has changed (``owned.version``). Safe to share
    between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._version: tuple | None = None
        self._copied: tuple[duckdb.DuckDBPyConnection, dict[str, VectorMatrix]] | None = None

    def reader(self) -> EmbeddingsReader:
        """A reader of the copy as the file is now (a cursor of its own, for this thread)."""
        with self._lock:
            version = owned.version(self.path)
            if self._copied is None or version != self._version:
                self._copied = self._copy()
                self._version = version
            con, matrices = self._copied
            return EmbeddingsReader(con.cursor(), matrices)

    def _copy(self) -> tuple[duckdb.DuckDBPyConnection, dict[str, VectorMatrix]]:
        memory = connect(Path(":memory:"))
        tables: dict[str, pa.Table] = {}
        if self.path.exists():
            with owned.transaction(self.path, EXPLANATIONS, owned.BUSY_TIMEOUT_S, read_only=True) as con:
                tables["explanations"] = con.sql("SELECT * FROM explanations").to_arrow_table()
                tables["embeddings"] = con.sql(
                    "SELECT * FROM embeddings ORDER BY model, source_id, unit, text_kind"
                ).to_arrow_table()
        matrices = VectorMatrix.by_model(tables["embeddings"]) if tables else {}
        if tables:  # the vectors live in the matrices only: half the memory
            vectors = tables["embeddings"].schema.get_field_index("vector")
            tables["embeddings"] = tables["embeddings"].set_column(
                vectors,
                "vector",
                pa.nulls(len(tables["embeddings"]), tables["embeddings"].schema.field(vectors).type),
            )
        for name in EXPLANATIONS.tables:
            memory.execute(_ddl(name))
            if name in tables:
                memory.register("_nd_copy", tables[name])
                memory.execute(f"INSERT INTO {name} SELECT * FROM _nd_copy")
                memory.unregister("_nd_copy")
        return memory, matrices


@dataclass(frozen=True)
class VectorMatrix:
    """One model's vectors as a matrix, row ``i`` the text (``source_id``, ``unit``, ``text_kind``)
    of ``keys``' row ``i``."""

    vectors: np.ndarray  # (n, EMBEDDING_DIM) float32 unit vectors
    keys: pa.Table

    @classmethod
    def by_model(cls, table: pa.Table) -> dict[str, VectorMatrix]:
        """Each model's rows of an ``embeddings`` table (sorted by model: one slice each)."""
        found = {}
        models = table.column("model").to_numpy(zero_copy_only=False)
        for model in dict.fromkeys(models):
            rows = np.flatnonzero(models == model)
            part = table.slice(int(rows[0]), len(rows))
            flat = part.column("vector").combine_chunks().flatten().to_numpy()
            found[str(model)] = cls(
                np.ascontiguousarray(flat, dtype=np.float32).reshape(len(rows), EMBEDDING_DIM),
                part.select(["source_id", "unit", "text_kind"]),
            )
        return found

    def nearest(self, vector: np.ndarray, n: int) -> pa.Table:
        """The ``n`` rows nearest ``vector`` (inner product, the cosine of unit vectors): their keys
        and ``sim``."""
        sims = self.vectors @ np.asarray(vector, dtype=np.float32)
        n = min(n, len(sims))
        rows = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
        return self.keys.take(pa.array(rows)).append_column("sim", pa.array(sims[rows]))


def _ddl(table: str) -> str:
    """The ``CREATE TABLE`` of one of the explanations file's tables, from its schema."""
    statements = [s.strip() for s in EXPLANATIONS.ddl.split(";")]
    return next(s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} "))


class EmbeddingsReader:
    """Queries on an open connection to the explanations file, or on its in-memory copy and the copy's
    ``matrices`` of vectors."""

    def __init__(self, con: duckdb.DuckDBPyConnection, matrices: dict[str, VectorMatrix] | None = None):
        self._con = con
        self._matrices = matrices

    def count(self, model: str) -> int:
        if self._matrices is not None:
            return len(self._matrices[model].vectors) if model in self._matrices else 0
        return self._con.execute("SELECT count(*) FROM embeddings WHERE model = ?", [model]).fetchall()[0][0]

    def search(self, vector: np.ndarray, model: str, limit: int = 20) -> list[MeaningHit]:
        """See ``Embeddings.search``."""
        n_rows = int(limit) * len(TEXT_KINDS)
        query = unit_vectors(np.asarray(vector, dtype=np.float32)[None])[0]  # stored vectors are unit vectors
        if self._matrices is None:
            rows = self._con.execute(_SEARCH, [query.tolist(), model, int(limit), n_rows]).fetchall()
        elif model not in self._matrices:
            rows = []
        else:
            self._con.register("_nd_nearest", self._matrices[model].nearest(query, n_rows))
            try:
                rows = self._con.execute(_SEARCH_NEAREST, [model, int(limit)]).fetchall()
            finally:
                self._con.unregister("_nd_nearest")
        return [
            MeaningHit(UnitRef(s, u), float(sim), kind, text, explanation, corr)
            for s, u, kind, text, sim, explanation, corr in rows
        ]


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


# Each unit's best text by similarity, the best units first; then their best explanation. A unit has
# at most one row per text kind, so the best ``limit * len(TEXT_KINDS)`` rows hold the best ``limit``
# units: a top-N of rows (no grouping of every row) before the texts and explanations are joined.
# ``rows`` is that top-N: scanned by DuckDB (``_SEARCH``) or given (``_SEARCH_NEAREST``).
_TAIL = """
nearest AS (
    SELECT source_id, unit, arg_max(text_kind, sim) AS text_kind, max(sim) AS sim
    FROM rows GROUP BY source_id, unit ORDER BY sim DESC LIMIT $limit),
best AS (
    SELECT source_id, unit, arg_max(explanation, coalesce(correlation, -2)) AS explanation,
           max(correlation) AS correlation
    FROM explanations WHERE (source_id, unit) IN (SELECT (source_id, unit) FROM nearest)
    GROUP BY source_id, unit)
SELECT n.source_id, n.unit, n.text_kind, e.text, n.sim, b.explanation, b.correlation
FROM nearest n JOIN embeddings e USING (source_id, unit, text_kind) LEFT JOIN best b USING (source_id, unit)
WHERE e.model = $model ORDER BY n.sim DESC, n.source_id, n.unit
"""
_SEARCH = f"""
WITH rows AS (
    SELECT source_id, unit, text_kind, array_inner_product(vector, $1::FLOAT[{EMBEDDING_DIM}]) AS sim
    FROM embeddings WHERE model = $2 ORDER BY sim DESC LIMIT $4),""" + _TAIL.replace("$limit", "$3").replace(
    "$model", "$2"
)
_SEARCH_NEAREST = "WITH rows AS (SELECT * FROM _nd_nearest)," + _TAIL.replace("$limit", "$2").replace(
    "$model", "$1"
)


def _vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), EMBEDDING_DIM)
