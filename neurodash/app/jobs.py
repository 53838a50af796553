"""Long work in the app (the text probe, activation maximization): background callbacks on the
app's DiskcacheManager, each with a progress bar, a stage line and a cancel button."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dash import Input, Output, html


@dataclass(frozen=True)
class JobControls:
    """The ids of one job's controls: the ``run`` and ``cancel`` buttons, the ``progress`` bar and
    ``stage`` text inside ``progress_box`` (shown while it runs), and the ``status`` line."""

    run: str
    cancel: str
    progress: str
    progress_box: str
    stage: str
    status: str

    def toolbar(
        self, run_label: str, total: int, settings: Sequence = (), status: str | None = None
    ) -> html.Div:
        """The buttons, any ``settings`` between them and the progress, the progress and the status
        (``status``: what it says first)."""
        return html.Div(
            [
                html.Button(run_label, id=self.run, className="nd-button nd-primary"),
                html.Button("Cancel", id=self.cancel, className="nd-button", disabled=True),
                *settings,
                html.Div(
                    [
                        html.Progress(id=self.progress, value="0", max=str(total)),
                        html.Span(id=self.stage, className="nd-muted"),
                    ],
                    id=self.progress_box,
                    className="nd-progress",
                    style={"display": "none"},
                ),
                html.Span(status, id=self.status, className="nd-status"),
            ],
            className="nd-toolbar",
        )

    def background_options(self, total: int, interval_ms: int) -> dict:
        """``app.callback`` keywords for the job started by ``run``: progress goes to the bar (value,
        max) and the stage text, shown while it runs; ``run`` is disabled and ``cancel`` enabled
        meanwhile. The job's ``set_progress`` takes ``(value, max, stage)`` as strings."""
        return {
            "background": True,
            "progress": [
                Output(self.progress, "value"),
                Output(self.progress, "max"),
                Output(self.stage, "children"),
            ],
            "progress_default": ["0", str(total), "Starting…"],
            "running": [
                (Output(self.run, "disabled"), True, False),
                (Output(self.cancel, "disabled"), False, True),
                (Output(self.progress_box, "style"), {"display": "flex"}, {"display": "none"}),
            ],
            "cancel": [Input(self.cancel, "n_clicks")],
            "interval": interval_ms,
            "prevent_initial_call": True,
        }
