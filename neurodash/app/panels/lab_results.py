"""The Lab page's results: one saved run drawn (pure functions of a ``LabRun``). Every head and unit
named links to its page (``routes``); prompt and token text is always text, never markup.

The per-prompt plots (predictions, logit lens, attribution, residual patching) and the attention
plots are drawn again by the page's callbacks when another prompt or head is picked.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from dash import dcc, html

from neurodash import lab_figures
from neurodash.app import ids, routes
from neurodash.app.render import figures, widgets
from neurodash.lab import Component
from neurodash.lab_run import LabRun
from neurodash.units import UnitRef, neuron_source_id

TOP = 10
FORMATS = ("json", "csv")


def component_link(c: Component, value: str = "") -> html.Span | dcc.Link:
    """A head links to its page, a neuron to its unit page; an MLP layer has none and is plain text."""
    label = f"{c}{' ' + value if value else ''}"
    if c.kind == "head":
        return dcc.Link(label, href=routes.head_href(c.layer, c.index), className="nd-lab-chip")
    if c.kind == "neuron":
        href = routes.unit_href(UnitRef(neuron_source_id(c.layer), c.index))
        return dcc.Link(label, href=href, className="nd-lab-chip")
    return html.Span(label, className="nd-lab-chip")


def ranked_list(items: Sequence[tuple[Component, float]], fmt: str = "{:+.2f}") -> html.Div:
    return html.Div([component_link(c, fmt.format(v)) for c, v in items], className="nd-lab-chips")


def _graph(name: str, run: LabRun, prompt: int = 0, **options) -> dcc.Graph:
    suffix = "-".join(str(v) for v in options.values())
    return figures.graph(
        lab_figures.figure(run, name, prompt, **options), f"lab-{name}{'-' + suffix if suffix else ''}"
    )


def summary(run: LabRun) -> html.Div:
    """The run's prompts (as text), metrics, warnings, timing and downloads."""
    rows = []
    gaps = run.gaps
    for i, (p, a) in enumerate(zip(run.prompts, run.analyses)):
        rows.append(
            html.Tr(
                [
                    html.Td(str(i + 1)),
                    html.Td(p.text, className="nd-mono"),
                    html.Td("".join(p.corrupted_tokens[1:]), className="nd-mono"),
                    html.Td(p.metric_name, className="nd-mono"),
                    html.Td(f"{a.attribution.metric:.2f}"),
                    html.Td(f"{run.patching.corrupted_metric[i]:.2f}"),
                    html.Td(f"{gaps[i]:+.2f}"),
                ]
            )
        )
    header = html.Tr(
        [html.Th(h) for h in ("#", "prompt", "corrupted", "metric", "clean", "corrupted", "gap")]
    )
    small = run.small_gap_prompts()
    warning = (
        html.P(
            "Prompt(s) "
            + ", ".join(str(i + 1) for i in small)
            + ": the clean and corrupted runs barely differ, so their normalised scores are noise; "
            "averages over prompts weight each prompt by its gap.",
            className="nd-lab-warning",
        )
        if small
        else None
    )
    when = f" on {run.created_at:%Y-%m-%d %H:%M} UTC" if run.created_at else ""
    return html.Div(
        [
            html.P(
                f"Run {run.run_id} · {run.model} · {len(run.prompts)} prompts · {run.settings.ablation} ablation · "
                f"{run.seconds:.1f} s, {run.forward_passes} forward passes{when}",
                className="nd-muted",
            ),
            html.Table([html.Thead(header), html.Tbody(rows)], className="nd-table nd-lab-prompts"),
            warning,
            html.Div(
                [
                    html.Span("Download this run", className="nd-muted"),
                    *[
                        html.Button(
                            fmt.upper(),
                            id={"type": ids.LAB_DOWNLOAD_FORMAT, "fmt": fmt},
                            className="nd-button nd-step",
                        )
                        for fmt in FORMATS
                    ],
                    dcc.Download(id=ids.LAB_DOWNLOAD),
                ],
                className="nd-downloads",
            ),
        ]
    )


def prompt_picker(run: LabRun) -> dcc.Dropdown:
    options = [{"label": f"{i + 1}: {p.text}", "value": i} for i, p in enumerate(run.prompts)]
    return dcc.Dropdown(
        id=ids.LAB_PROMPT_PICK, options=options, value=0, clearable=False, className="nd-lab-pick"
    )


def prompt_body(run: LabRun, prompt: int) -> list:
    """Predictions, logit lens, direct logit attribution and residual patching of one prompt."""
    a = run.analyses[prompt]
    dla = a.attribution.heads
    order = (-abs(dla)).argsort(axis=None)[:TOP]
    top_dla = [
        (Component("head", int(i) // dla.shape[1], int(i) % dla.shape[1]), float(dla.flat[i])) for i in order
    ]
    return [
        html.Div(
            [_graph("predictions", run, prompt), _graph("logit_lens", run, prompt)],
            className="nd-grid-2",
        ),
        html.Div(
            [_graph("attribution_heads", run, prompt), _graph("attribution_mlps", run, prompt)],
            className="nd-grid-2",
        ),
        html.P("Largest direct attributions:", className="nd-muted"),
        ranked_list(top_dla),
        _graph("patching_resid", run, prompt),
    ]


def attention_controls(run: LabRun) -> html.Div:
    L, H = run.analyses[0].attention.patterns.shape[:2]
    heads = [{"label": f"L{layer}H{h}", "value": f"{layer}/{h}"} for layer in range(L) for h in range(H)]
    best = run.patching.ranked_heads(1)[0][0] if run.patching.ranked_heads(1) else Component("head", 0, 0)
    longest = max(len(p.token_ids) for p in run.prompts)
    return html.Div(
        [
            html.Span("head", className="nd-muted"),
            dcc.Dropdown(
                id=ids.LAB_ATTN_HEAD,
                options=heads,
                value=f"{best.layer}/{best.index}",
                clearable=False,
                className="nd-lab-pick",
            ),
            html.Span("rank heads by attention from the last token to", className="nd-muted"),
            dcc.Dropdown(
                id=ids.LAB_ATTN_BACK,
                options=[{"label": f"{k} back", "value": k} for k in range(1, max(2, longest - 1))],
                value=min(2, max(1, longest - 2)),
                clearable=False,
                className="nd-lab-pick",
            ),
        ],
        className="nd-toolbar",
    )


def attention_body(run: LabRun, prompt: int, layer: int, head: int, back: int) -> list:
    a = run.analyses[prompt].attention
    back = min(back, a.patterns.shape[-1] - 1)
    return [
        html.Div(
            [
                _graph("attention", run, prompt, layer=layer, head=head),
                _graph("attention_back", run, prompt, back=back),
            ],
            className="nd-grid-2",
        ),
        html.P(f"Heads by attention {back} back from the last token:", className="nd-muted"),
        ranked_list(a.ranked(back, TOP), "{:.2f}"),
    ]


def neuron_ablation(run: LabRun) -> list:
    """The neurons with the largest direct attribution, largest first, and the change in the metric
    when each is ablated (mean over prompts)."""
    a = run.ablation
    if not a.neurons:
        return []
    effects = a.neuron_effects.mean(0)
    return [
        html.P(
            f"The {len(a.neurons)} neurons with the largest direct attribution, ablated one at a time "
            f"({a.kind}; change in the metric):",
            className="nd-muted",
        ),
        ranked_list(list(zip(a.neurons, (float(v) for v in effects)))),
    ]


def circuit_section(run: LabRun) -> html.Div:
    c = run.circuit
    verdict = (
        f"Ablating these {len(c.components)} together ({c.ablation}) leaves {c.kept_when_ablated:.0%} of the "
        f"behaviour (goal ≤ {1 - c.threshold:.0%}); kept alone, with everything else mean-ablated, they "
        f"recover {c.faithfulness:.0%} of it (faithfulness)."
    )
    if c.found and not c.sufficient:
        verdict += (
            f" No set within the search's size limit was also sufficient (≥ {c.threshold:.0%} alone): "
            "these are necessary, not a circuit that does the task on its own."
        )
    if not c.found:
        verdict = (
            f"No set within the search's size limit removed {c.threshold:.0%} of the behaviour: the "
            f"behaviour is spread out (best: {c.kept_when_ablated:.0%} kept). " + verdict
        )
    return html.Div(
        [
            html.P(verdict, className="nd-muted"),
            html.Div([component_link(m) for m in c.components], className="nd-lab-chips"),
        ]
    )


def steering_section(run: LabRun) -> list:
    if not run.steering:
        return [
            html.P(
                "No unit steered in this run: add one as UNIT=COEFFICIENT (e.g. L15N631=4).",
                className="nd-muted",
            )
        ]
    blocks = []
    for i, s in enumerate(run.steering):
        name: html.Span | dcc.Link = (
            dcc.Link(s.label, href=routes.unit_href(UnitRef(s.source_id, s.unit)))
            if s.source_id is not None
            else component_link(Component("head", int(s.label[1:].split("H")[0]), s.unit))
        )
        blocks.append(
            html.Div(
                [
                    html.H3(
                        ["Steering with ", name, f" × {s.steer.coefficient:g} at {s.run.hook}"],
                        className="nd-lab-h3",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Div("unsteered", className="nd-muted"),
                                    html.Pre(s.run.unsteered_text, className="nd-lab-text"),
                                ]
                            ),
                            html.Div(
                                [
                                    html.Div("steered", className="nd-muted"),
                                    html.Pre(s.run.steered_text, className="nd-lab-text"),
                                ]
                            ),
                        ],
                        className="nd-grid-2",
                    ),
                    _graph("steering_sweep", run, 0, index=i),
                ]
            )
        )
    return blocks


def show(run: LabRun) -> list:
    """Every section of a run."""
    return [
        widgets.panel("Run", summary(run)),
        widgets.panel(
            "Per prompt: predictions, logit lens, attribution, residual patching",
            prompt_picker(run),
            html.Div(prompt_body(run, 0), id=ids.LAB_PROMPT_BODY),
        ),
        widgets.panel(
            "Attention",
            attention_controls(run),
            html.Div(id=ids.LAB_ATTN_BODY),
        ),
        widgets.panel(
            "Ablation",
            html.Div([_graph("ablation_heads", run), _graph("ablation_mlps", run)], className="nd-grid-2"),
            html.P("Most harmful ablations (mean change in the metric over prompts):", className="nd-muted"),
            ranked_list(run.ablation.ranked(TOP)),
            *neuron_ablation(run),
        ),
        widgets.panel(
            "Activation patching (clean → corrupted)",
            html.Div([_graph("patching_heads", run), _graph("patching_mlps", run)], className="nd-grid-2"),
            html.P("Heads that restore the most (gap-weighted over prompts):", className="nd-muted"),
            ranked_list(run.patching.ranked_heads(TOP), "{:.2f}"),
        ),
        widgets.panel("Minimal circuit", circuit_section(run)),
        widgets.panel("Steering", *steering_section(run)),
    ]


def download(run: LabRun, fmt: str) -> dict:
    """The run as a file for ``dcc.Download``: JSON (the whole run) or CSV (long rows)."""
    name = f"lab-run-{run.run_id}"
    if fmt == "json":
        return dcc.send_string(json.dumps(run.to_json(), allow_nan=False), f"{name}.json")
    rows = run.csv_rows()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return dcc.send_string(out.getvalue(), f"{name}.csv")
