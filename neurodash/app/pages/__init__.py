"""One module per page: its ``layout`` and the wiring of its panels' callbacks (``register_callbacks``).
Pages take their paths from ``app/routes.py`` and hold no SQL, torch or HTML strings."""
