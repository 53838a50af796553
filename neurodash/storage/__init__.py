"""Storage: the only package with SQL. Both sides import it; it imports neither.

- ``schema``: every table's DDL and the schema versions, for the analysis store and the app's files;
- ``writer``: ``StoreWriter``, which builds a store in a ``.partial`` file and renames it into place;
- ``reader``: ``Store``, a finished store opened read-only, and its queries;
- ``copy``: query results streamed into CSV, JSON lines or Parquet files;
- ``owned``, ``sets``, ``maximize``: the small files the app owns beside a store (curated sets,
  maximization results), each opened for one transaction at a time.
"""

from neurodash.storage.reader import Store, open_store
from neurodash.storage.writer import StoreWriter, check_writable

__all__ = ["Store", "StoreWriter", "check_writable", "open_store"]
