"""Every component id of the app, in one place.

``assets/neurodash.js`` refers to a few of them by value (marked *js*): keep the two in step.
"""

# the shell: top bar and navigation
NAV_LOCATION = "nav-location"
JUMP_INPUT = "jump-input"  # js: "/" focuses it
JUMP_ERROR = "jump-error"

# overview
UNITS_GRID = "units-grid"
UNITS_DATA = "units-data"
UNITS_COUNT = "units-count"
LAYER_PLOTS = "layer-plots"
UNITS_START_FILTER = "units-start-filter"  # the grid's filter when the page opens (dead units hidden)
UNITS_SHOWN = "units-shown"  # how many units the grid's filter leaves
UNITS_DOWNLOAD = "units-download"
UNITS_DOWNLOAD_BUTTON = "units-download-button"
UNITS_DOWNLOAD_FORMAT = "units-download-format"
UNITS_DOWNLOAD_BUCKETS = "units-download-buckets"
UNITS_DOWNLOAD_STATUS = "units-download-status"
SEARCH_INPUT = "search-input"  # find units by token (app/panels/search.py)
SEARCH_MODE = "search-mode"
SEARCH_RESULTS = "search-results"
MEANING_INPUT = "meaning-input"  # find units by meaning (app/panels/meaning.py)
MEANING_RESULTS = "meaning-results"
UNITS_SELECTION = "units-selection"  # the units shown when the button was pressed, read from the grid

# unit page
CURRENT_UNIT = "current-unit"  # the unit the page shows, for its panels' callbacks (app/current_unit.py)
UNIT_PREV = "unit-prev"  # js: "k" and the left arrow follow it
UNIT_NEXT = "unit-next"  # js: "j" and the right arrow follow it
PERMALINK = "permalink"
PERMALINK_COPY = "permalink-copy"
HISTOGRAM = "unit-histogram"
LOGITS = "unit-logits"
TOKEN_INSPECTOR = "token-inspector"  # js: shows the hovered token's title
DOWNLOAD = "unit-download"
DOWNLOAD_FORMAT = "unit-download-format"  # pattern-matching type: {"type": DOWNLOAD_FORMAT, "fmt": "csv"}
SET_NAME = "set-name"
SET_NAMES = "set-names"  # the datalist of existing sets
SET_NOTE = "set-note"
SET_ADD_TOP = "set-add-top"
# pattern-matching type: {"type": SET_ADD_EXAMPLE, "bucket": "top", "rank": 0}
SET_ADD_EXAMPLE = "set-add-example"
SET_FEEDBACK = "set-feedback"

# curated sets page
SETS_SELECTED = "sets-selected"  # the set the page shows (from ?name=)
SETS_RENAME_INPUT = "sets-rename-input"
SETS_RENAME = "sets-rename"
SETS_DELETE = "sets-delete"  # a ConfirmDialogProvider around the delete button
SETS_DOWNLOAD = "sets-download"
# pattern-matching type: {"type": SETS_DOWNLOAD_FORMAT, "fmt": "csv"}
SETS_DOWNLOAD_FORMAT = "sets-download-format"
SETS_FEEDBACK = "sets-feedback"
SETS_BODY = "sets-body"  # the sets table and the set shown: drawn again when an example is removed
# pattern-matching type: {"type": SETS_REMOVE_EXAMPLE, "source": "L1.mlp", "unit": 5, "bucket": "top", "rank": 0}
SETS_REMOVE_EXAMPLE = "sets-remove-example"

# text probe
PROBE_CONFIG = "probe-config"
PROBE_TEXT = "probe-text"
PROBE_RUN = "probe-run"
PROBE_CANCEL = "probe-cancel"
PROBE_PROGRESS = "probe-progress"
PROBE_PROGRESS_BOX = "probe-progress-box"
PROBE_STAGE = "probe-stage"
PROBE_STATUS = "probe-status"
PROBE_RESULT = "probe-result"
PROBE_COLOR_BY = "probe-color-by"
PROBE_TOKENS = "probe-tokens"
PROBE_SELECTED_TOKEN = "probe-selected-token"  # {"index": i, "at": ms}, set by assets/neurodash.js on a click
PROBE_TOKEN_UNITS = "probe-token-units"
PROBE_TOP_UNITS = "probe-top-units"
PROBE_LOCATION = "probe-location"  # moves to the run's address (/probe?run=KEY) once it is saved
PROBE_COLOR_UNIT = "probe-color-unit"  # any unit to colour the text by (L12N345, L15F7)
PROBE_COLOR_UNIT_STATUS = "probe-color-unit-status"

# unit page: activation maximization (neurodash/app/panels/maximize.py)
MAXIMIZE_RUN = "maximize-run"
MAXIMIZE_CANCEL = "maximize-cancel"
MAXIMIZE_LENGTH = "maximize-length"
MAXIMIZE_STEPS = "maximize-steps"
MAXIMIZE_PROGRESS = "maximize-progress"
MAXIMIZE_PROGRESS_BOX = "maximize-progress-box"
MAXIMIZE_STAGE = "maximize-stage"
MAXIMIZE_STATUS = "maximize-status"
MAXIMIZE_DATA = "maximize-data"
MAXIMIZE_RESULT = "maximize-result"
MAXIMIZE_FIGURE = "maximize-figure"
MAXIMIZE_WATCH = "maximize-watch"  # an interval that watches a run started before the page was built

# unit page: try your own text (neurodash/app/panels/own_text.py)
OWN_TEXT_INPUT = "own-text-input"
OWN_TEXT_RUN = "own-text-run"
OWN_TEXT_CANCEL = "own-text-cancel"
OWN_TEXT_PROGRESS = "own-text-progress"
OWN_TEXT_PROGRESS_BOX = "own-text-progress-box"
OWN_TEXT_STAGE = "own-text-stage"
OWN_TEXT_STATUS = "own-text-status"
OWN_TEXT_SCALE = "own-text-scale"
OWN_TEXT_DATA = "own-text-data"
OWN_TEXT_RESULT = "own-text-result"

# heads page (neurodash/app/pages/heads.py)
HEADS_METRIC = "heads-metric"  # the score the heat map shows
HEADS_HEATMAP = "heads-heatmap"  # a click on a cell opens that head's page
HEADS_GRID = "heads-grid"

# head page (neurodash/app/pages/head.py); its j / k links are UNIT_PREV / UNIT_NEXT
HEAD_SCORES = "head-scores"
HEAD_LOGITS = "head-logits"
HEAD_EXAMPLE = "head-example"  # which example's query row the strip shows
HEAD_PATTERN = "head-pattern"

# text probe: attention (neurodash/app/panels/probe_attention.py)
PROBE_ATTN_LAYER = "probe-attn-layer"
PROBE_ATTN_HEAD = "probe-attn-head"
PROBE_ATTN_FIGURE = "probe-attn-figure"
PROBE_ATTN_ARCS = "probe-attn-arcs"
PROBE_ATTN_TOP_HEADS = "probe-attn-top-heads"  # the heads attending most to the clicked token


# the circuit lab (neurodash/app/pages/lab.py, panels/lab_results.py)
LAB_LOCATION = "lab-location"  # moves to the finished run's URL
LAB_PROMPTS = "lab-prompts"
LAB_ANSWERS = "lab-answers"
LAB_COUNTERFACTUALS = "lab-counterfactuals"
LAB_CORRUPTED = "lab-corrupted"
LAB_CORRUPTION = "lab-corruption"
LAB_ABLATION = "lab-ablation"
LAB_STEER = "lab-steer"
LAB_RUN = "lab-run"
LAB_CANCEL = "lab-cancel"
LAB_PROGRESS = "lab-progress"
LAB_PROGRESS_BOX = "lab-progress-box"
LAB_STAGE = "lab-stage"
LAB_STATUS = "lab-status"
LAB_RUN_ID = "lab-run-id"  # the run shown (a dcc.Store), for the callbacks that draw it
LAB_PROMPT_PICK = "lab-prompt-pick"
LAB_PROMPT_BODY = "lab-prompt-body"  # the per-prompt plots, drawn again when another prompt is picked
LAB_ATTN_HEAD = "lab-attn-head"
LAB_ATTN_BACK = "lab-attn-back"
LAB_ATTN_BODY = "lab-attn-body"
LAB_DOWNLOAD = "lab-download"
# pattern-matching type: {"type": LAB_DOWNLOAD_FORMAT, "fmt": "csv"}
LAB_DOWNLOAD_FORMAT = "lab-download-format"
