"""Pure renderers: data in, Dash components or Plotly figure dicts out. No store, no callbacks.

- ``highlights``: tokens coloured by activation or attention (token rows, examples, attention arcs);
- ``figures``: Plotly figure dicts (histogram, logits, layer distributions, heads' heat maps);
- ``widgets``: panels, stat cards, unit links and lists, the unit header, feedback;
- ``tables``: HTML tables of units and sources, and the AG Grid settings the grids share;
- ``formats``: how metrics and fractions of tokens read.

Untrusted text (corpus tokens, vocabulary) only ever becomes the ``children`` or ``title`` of a
component, which React renders as text, a JSON attribute that ``assets/neurodash.js`` puts in
the page as text (``highlights.token_row``), or a Plotly label escaped with ``figures.plotly_text``.
Figures are plain dicts: building ``plotly.graph_objects`` figures costs milliseconds each.
"""
