"""Long work in the app (the text probe, activation maximization): background callbacks on the
app's DiskcacheManager, each with a progress bar, a stage line and a cancel button."""

from __future__ import annotations

from dash import Input, Output


def background_options(
    run: str, cancel: str, progress: str, progress_box: str, stage: str, total: int, interval_ms: int
) -> dict:
    """``app.callback`` keywords for a job started by the button ``run``: progress goes to the
    ``progress`` bar (value, max) and the ``stage`` text inside ``progress_box``, shown while it runs;
    ``run`` is disabled and ``cancel`` enabled meanwhile. The job's ``set_progress`` takes
    ``(value, max, stage)`` as strings."""
    return {
        "background": True,
        "progress": [Output(progress, "value"), Output(progress, "max"), Output(stage, "children")],
        "progress_default": ["0", str(total), "Starting…"],
        "running": [
            (Output(run, "disabled"), True, False),
            (Output(cancel, "disabled"), False, True),
            (Output(progress_box, "style"), {"display": "flex"}, {"display": "none"}),
        ],
        "cancel": [Input(cancel, "n_clicks")],
        "interval": interval_ms,
        "prevent_initial_call": True,
    }
