"""The schema of every DuckDB file neurodash writes, each kind one ``FileSchema``: its tables' DDL,
its schema version and how messages name it.

- ``STORE``: the analysis store, written once by ``StoreWriter`` and opened read-only after;
- ``SETS``: curated example sets, the app-owned file beside a store (``demo.sets.duckdb``);
- ``MAXIMIZE``: activation-maximization results, beside it too (``demo.maximize.duckdb``);
- ``LAB``: circuit-lab runs, beside it too (``demo.lab.duckdb``);
- ``EXPLANATIONS``: units' scored explanations and the embeddings that search them by meaning,
  beside it too (``demo.explanations.duckdb``).

A new kind of file (the lab runs, explanations) is one more ``FileSchema`` here, added to
``FILE_KINDS`` so that opening one kind of file where another is expected says which it is, and a
``paths.beside`` name; its module opens it with ``owned.transaction``. A change to a kind's tables
raises its ``version``: a file of another version is refused with one line, never misread.

Every file keeps ``schema_version`` in its ``meta`` table. Sets and results files written before
they had one are read as version 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSchema:
    """One kind of DuckDB file: ``what`` names it in messages ("store"), ``made_by`` what writes it
    ("`neurodash precompute`"); ``tables`` must all be there, ``optional_tables`` (newer) may be missing."""

    what: str
    made_by: str
    version: int
    ddl: str
    tables: tuple[str, ...]
    optional_tables: tuple[str, ...] = ()


# --- the analysis store -----------------------------------------------------------------------
STORE = FileSchema(
    what="store",
    made_by="`neurodash precompute` or `neurodash demo`",
    version=1,
    ddl="""
CREATE TABLE meta (key VARCHAR, value VARCHAR);
CREATE TABLE sources (
    source_id VARCHAR, model VARCHAR, hook VARCHAR, kind VARCHAR, layer INTEGER,
    n_units INTEGER, sae VARCHAR, n_tokens BIGINT, config JSON, created_at TIMESTAMPTZ);
CREATE TABLE vocab (model VARCHAR, token_id INTEGER, token VARCHAR);
CREATE TABLE sequences (seq_id BIGINT, doc_id BIGINT, start BIGINT, token_ids INTEGER[]);
CREATE TABLE units (
    source_id VARCHAR, unit INTEGER, max_act FLOAT, min_act FLOAT, mean_act FLOAT,
    std_act FLOAT, skew FLOAT, kurtosis FLOAT, density FLOAT, n_tokens BIGINT,
    hist_edges FLOAT[], hist_counts BIGINT[]);
CREATE TABLE examples (
    source_id VARCHAR, unit INTEGER, bucket VARCHAR, rank INTEGER, seq_id BIGINT,
    pos INTEGER, start INTEGER, acts FLOAT[]);
CREATE TABLE logits (
    source_id VARCHAR, unit INTEGER, sign VARCHAR, rank INTEGER, token_id INTEGER, value FLOAT);
CREATE TABLE neighbors (
    source_id VARCHAR, unit INTEGER, rank INTEGER, neighbor INTEGER, cosine FLOAT);
CREATE TABLE scores (source_id VARCHAR, unit INTEGER, metric VARCHAR, value DOUBLE);
CREATE TABLE links (
    source_id VARCHAR, unit INTEGER, rank INTEGER, target_source_id VARCHAR, target_unit INTEGER,
    weight FLOAT, share FLOAT);
CREATE TABLE links_strong (
    source_id VARCHAR, unit INTEGER, rank INTEGER, target_source_id VARCHAR, target_unit INTEGER,
    weight FLOAT, share FLOAT);
CREATE TABLE clusters (source_id VARCHAR, unit INTEGER, seq_id BIGINT, pos INTEGER, cluster INTEGER);
CREATE TABLE attention (
    source_id VARCHAR, unit INTEGER, bucket VARCHAR, rank INTEGER, pattern FLOAT[], before FLOAT);
""",
    tables=("meta", "sources", "vocab", "sequences", "units", "examples", "logits", "neighbors", "scores"),
    optional_tables=(
        "links",
        "clusters",
        "attention",
        "links_strong",  # neuron -> features by share of its strong firing (activation-weighted)
    ),  # a store from before them still opens, and reads them empty
)

# A unit's statistics: columns of ``units``, in order, and the numbers the overview shows and filters.
STAT_COLUMNS = ("max_act", "min_act", "mean_act", "std_act", "skew", "kurtosis", "density")
# The columns of ``Store.units_frame()`` before its score metrics (one column per metric follows).
UNIT_FRAME_COLUMNS = ("source_id", "layer", "kind", "unit", *STAT_COLUMNS)
# An attention head example's query row over its window (``attention.pattern``, keyed like examples).
ATTENTION_COLUMNS = ("source_id", "unit", "bucket", "rank", "pattern", "before")
# What names one example in the store.
EXAMPLE_KEYS = ("source_id", "unit", "bucket", "rank", "seq_id", "pos")

# --- the files the app owns beside a store ------------------------------------------------------
# Their DDL runs on every writing connection, so it creates only what is missing.
_OWNED_META = "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);"

SETS = FileSchema(
    what="sets file",
    made_by="the dashboard",
    version=1,
    ddl=_OWNED_META
    + """
CREATE SEQUENCE IF NOT EXISTS set_ids;
CREATE SEQUENCE IF NOT EXISTS item_ids;
CREATE TABLE IF NOT EXISTS sets (set_id BIGINT PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS set_examples (
    set_id BIGINT, item_id BIGINT, source_id VARCHAR, unit INTEGER, bucket VARCHAR, rank INTEGER,
    seq_id BIGINT, pos INTEGER, note VARCHAR, added_at TIMESTAMP,
    PRIMARY KEY (set_id, source_id, unit, bucket, rank));
""",
    tables=("sets", "set_examples"),
)
# A set's item as ``ExampleSets.items`` returns it: the columns of ``set_examples`` after the ids.
SET_ITEM_COLUMNS = ("source_id", "unit", "bucket", "rank", "seq_id", "pos", "note", "added_at")

MAXIMIZE = FileSchema(
    what="results file",
    made_by="`neurodash maximize` or the dashboard",
    version=1,
    ddl=_OWNED_META
    + """
CREATE SEQUENCE IF NOT EXISTS run_ids;
CREATE TABLE IF NOT EXISTS runs (
    run_id BIGINT PRIMARY KEY, source_id VARCHAR, unit INTEGER, model VARCHAR, length INTEGER,
    steps INTEGER, seed INTEGER, corpus_max DOUBLE, seconds DOUBLE, settings JSON, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS prompts (
    run_id BIGINT, rank INTEGER, token_ids INTEGER[], tokens VARCHAR[], text VARCHAR,
    activation DOUBLE, cross_entropy DOUBLE, acts DOUBLE[], PRIMARY KEY (run_id, rank));
""",
    tables=("runs", "prompts"),
)

LAB = FileSchema(
    what="lab runs file",
    made_by="`neurodash lab` or the dashboard's Lab page",
    version=1,
    ddl=_OWNED_META
    + """
CREATE SEQUENCE IF NOT EXISTS lab_run_ids;
CREATE TABLE IF NOT EXISTS lab_runs (
    run_id BIGINT PRIMARY KEY, model VARCHAR, prompts VARCHAR[], query JSON, seconds DOUBLE,
    result JSON, created_at TIMESTAMP);
""",
    tables=("lab_runs",),
)

# An explanation is scored by simulation on held-out windows: ``correlation`` of the simulated with the
# true activations, ``precision``/``recall`` of "fires strongly"; ``explainer`` names what wrote it
# ("pattern", or "llm:MODEL"). ``embeddings`` holds one vector per unit and kind of text
# ("explanation", "examples"), compared with DuckDB's array similarity functions.
EMBEDDING_DIM = 384

EXPLANATIONS = FileSchema(
    what="explanations file",
    made_by="`neurodash explain`",
    version=1,
    ddl=_OWNED_META
    + f"""
CREATE TABLE IF NOT EXISTS explanations (
    source_id VARCHAR, unit INTEGER, explainer VARCHAR, explanation VARCHAR, correlation DOUBLE,
    precision DOUBLE, recall DOUBLE, n_scored INTEGER, details JSON, created_at TIMESTAMP,
    PRIMARY KEY (source_id, unit, explainer));
CREATE TABLE IF NOT EXISTS embeddings (
    source_id VARCHAR, unit INTEGER, text_kind VARCHAR, model VARCHAR, text VARCHAR,
    vector FLOAT[{EMBEDDING_DIM}], PRIMARY KEY (source_id, unit, text_kind));
""",
    tables=("explanations", "embeddings"),
)

# Every kind, so that a file of one kind given for another is named for what it is.
FILE_KINDS = (STORE, SETS, MAXIMIZE, LAB, EXPLANATIONS)
