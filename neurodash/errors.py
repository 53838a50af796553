"""The one error type users see: a clear, one-line message, no traceback from the CLI."""


class NeurodashError(Exception):
    """Bad input or a state the user can fix; the CLI prints it as ``error: <message>`` and exits 2."""
