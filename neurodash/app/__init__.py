"""The Dash app: ``create_app(store_path)`` and ``serve(store_path, host, port)``.

A multi-page app (overview, unit, heads, head, text probe, curated sets, circuit lab, not found) over one store opened read-only. The
store reaches pages through the app's Flask server (``state.current()``), so several apps can
live in one process. Everything is served locally: no CDN, fonts or external scripts.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from neurodash import paths
from neurodash.errors import NeurodashError
from neurodash.storage import Store

ASSETS = Path(__file__).with_name("assets")


def create_app(store_path: str | os.PathLike, sets_file: str | os.PathLike | None = None):
    """A Dash app over the store at ``store_path``; a ``NeurodashError`` if it is missing or unreadable.
    Curated sets go to ``sets_file``, by default the file beside the store (``neurodash.storage.sets``); a
    ``NeurodashError`` if its folder does not exist."""
    if sets_file is not None:
        check_sets_file(Path(sets_file))
    store = Store(store_path)  # fails here, before any Dash set-up, with a clear message
    import dash
    import diskcache

    from neurodash.app import model_worker, routes, server, shell, state
    from neurodash.app.pages import head, heads, lab, not_found_404, overview, probe, sets, unit

    app_state = state.AppState.load(store, sets_file)
    cache_dir = paths.home() / "cache" / "background"
    cache_dir.mkdir(parents=True, exist_ok=True)
    app = dash.Dash(
        __name__,
        title="neurodash",
        use_pages=True,
        pages_folder="",
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        background_callback_manager=model_worker.JobsManager(  # jobs share one warm model worker
            diskcache.Cache(str(cache_dir)), model_worker.ModelWorker(store.meta.get("model", ""))
        ),
        update_title="",  # the tab keeps its title while callbacks run
    )
    state.attach(app.server, app_state)
    dash.page_registry.clear()  # pages register globally: start clean for each app in this process
    dash.register_page(overview.__name__, path=routes.OVERVIEW, title=overview.TITLE, layout=overview.layout)
    dash.register_page(
        unit.__name__, path_template=routes.UNIT_TEMPLATE, title=unit.title, layout=unit.layout
    )
    dash.register_page(heads.__name__, path=routes.HEADS, title=heads.TITLE, layout=heads.layout)
    dash.register_page(
        head.__name__, path_template=routes.HEAD_TEMPLATE, title=head.title, layout=head.layout
    )
    dash.register_page(probe.__name__, path=routes.PROBE, title=probe.TITLE, layout=probe.layout)
    dash.register_page(sets.__name__, path=routes.SETS, title=sets.TITLE, layout=sets.layout)
    dash.register_page(lab.__name__, path=routes.LAB, title=lab.TITLE, layout=lab.layout)
    dash.register_page(
        not_found_404.__name__, path=routes.NOT_FOUND, title=not_found_404.TITLE, layout=not_found_404.layout
    )
    app.layout = shell.layout(Path(store_path).name, store.meta.get("model", "?"))
    shell.register_callbacks(app)
    overview.register_callbacks(app)
    unit.register_callbacks(app, store.path)
    heads.register_callbacks(app)
    head.register_callbacks(app)
    probe.register_callbacks(app, app_state.unit_max)
    sets.register_callbacks(app)
    lab.register_callbacks(app, store.path)
    server.harden(app)  # limits, allowed hosts, security headers, real 404s and 400s
    return app


def check_sets_file(path: Path) -> None:
    """A chosen sets file must be a file (new or not) in a folder that exists."""
    if path.is_dir():
        raise NeurodashError(f"cannot use {path} as the sets file: it is a folder")
    if not path.parent.is_dir():
        raise NeurodashError(f"cannot write the sets file {path}: folder {path.parent} does not exist")


def freeze_startup_heap() -> None:
    """Move everything start-up loaded (the units frame, Dash's registries) out of the garbage
    collector's reach, so that its full collections stay short while serving pages (without
    this, one unit page in twenty took twice as long)."""
    gc.collect()
    gc.freeze()


def warm_search_index(app) -> None:
    """Load the store's index for the search by token (``Store.peak_index``: one scan of the examples,
    seconds on a large store) in the background, so that the first search is as fast as the next."""
    from neurodash.app import state

    store = app.server.extensions[state.EXTENSION].store
    threading.Thread(target=lambda: store.peak_index, name="neurodash-search-index", daemon=True).start()


def warm_meaning_search(app) -> None:
    """In the background, where the store's units are embedded: copy their vectors into memory and
    load the sentence-embedding model, so that the first search by meaning takes milliseconds, not
    the seconds of loading them."""
    from neurodash.app import state

    store = app.server.extensions[state.EXTENSION].store

    def load() -> None:
        from neurodash.meaning import has_embeddings

        try:
            if has_embeddings(store.path):
                from precompute.embed import cached_embedder

                cached_embedder()
        except NeurodashError:
            pass  # the search says what is wrong (the file, the model) when it is used

    threading.Thread(target=load, name="neurodash-meaning-search", daemon=True).start()


def serve(
    store_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
    sets_file: str | os.PathLike | None = None,
    threads: int = 8,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve the app with waitress (Flask's development server with ``debug``); a ``NeurodashError``
    for a port out of range or in use. Requests must name this machine's loopback, ``host`` or one
    of ``allowed_hosts`` in their ``Host`` header."""
    from neurodash.app import server

    server.check_options(port, threads)
    app = create_app(Path(store_path), sets_file)
    hosts = server.hosts_to_allow(host, allowed_hosts)
    server.allow_hosts(app, hosts)
    server.warn_if_exposed(host, [*server.LOOPBACK_HOSTS, *hosts])
    bound = None if debug else server.bind_waitress(app, host, port, threads)
    warm_search_index(app)
    warm_meaning_search(app)
    freeze_startup_heap()
    print(f"neurodash: serving {store_path} on http://{server.url_host(host)}:{port}")
    if bound is None:
        app.run(host=host, port=port, debug=True)
    else:
        server.IdleTrim(app)
        server.run_waitress(bound)
