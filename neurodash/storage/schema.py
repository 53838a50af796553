"""The schema of every DuckDB file neurodash writes: the analysis store, and the small files the
app owns beside it (curated sets, maximization results). Every table's DDL and version is here."""

SCHEMA_VERSION = 1

SCHEMA = """
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
CREATE TABLE clusters (source_id VARCHAR, unit INTEGER, seq_id BIGINT, pos INTEGER, cluster INTEGER);
"""

TABLES = ("meta", "sources", "vocab", "sequences", "units", "examples", "logits", "neighbors", "scores")
# Newer tables: a store without them still opens, and reads them empty.
OPTIONAL_TABLES = ("links", "clusters")


STAT_COLUMNS = ("max_act", "min_act", "mean_act", "std_act", "skew", "kurtosis", "density")
EXAMPLE_KEYS = ("source_id", "unit", "bucket", "rank", "seq_id", "pos")
