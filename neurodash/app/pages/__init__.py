"""One module per page: its ``layout`` and, beside it, its callbacks (``register_callbacks``)."""
