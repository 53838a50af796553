"""Storage: the only package with SQL. Both sides import it; it imports neither.

- ``schema``: every file's DDL and schema version (``STORE``, ``SETS``, ``MAXIMIZE``), and the
  column lists the rest of the code shares (``STAT_COLUMNS``, ``EXAMPLE_KEYS``);
- ``connect``: the one ``duckdb.connect``: every connection offline and inert (no extension
  installed or loaded, no file but its own), and a file of the wrong kind refused with one line;
- ``writer``: ``StoreWriter``, which builds a store in a ``.partial`` file and renames it into place,
  and ``remove_leftovers``, which cleans up after killed runs;
- ``reader``: ``Store``, a finished store opened read-only, and its queries;
- ``copy``: query results streamed into CSV, JSON lines or Parquet files;
- ``owned``: the small files the app owns beside a store, each opened for one transaction at a
  time; ``sets`` (curated example sets) and ``maximize`` (maximization results) are two of them;
- ``embeddings``: the vectors of search by meaning, in the explanations file, and their search.
"""

from neurodash.storage.reader import Store, open_store
from neurodash.storage.writer import StoreWriter, check_writable, remove_leftovers

__all__ = ["Store", "StoreWriter", "check_writable", "open_store", "remove_leftovers"]
