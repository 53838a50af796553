"""The app's addresses (``neurodash.app.routes``): hrefs read back as the unit or set they name;
anything else reads as nothing; names and ids of any text stay inside their part of the URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from neurodash.app import current_unit, routes
from neurodash.units import UnitRef

REFS = [
    UnitRef("L0.mlp", 0),
    UnitRef("L12.mlp", 345),
    UnitRef("L3.sae", 7),
    UnitRef("L3.sae.res-jb", 16383),
    UnitRef("odd id/with?#%&<>", 2),  # an id that is no path segment as it is
    UnitRef("ünïcode", 1),
]


@pytest.mark.parametrize("ref", REFS, ids=str)
def test_unit_href_reads_back_as_its_unit(ref):
    href = routes.unit_href(ref)
    assert href.startswith(routes.UNIT_PREFIX) and href.count("/") == 3
    assert urlsplit(href).path == href, "no query or fragment however the id reads"
    assert routes.parse_unit_path(href) == ref
    assert routes.parse_unit_path(href + "/") == ref
    assert routes.unit_source_href(ref.source_id) + str(ref.unit) == href


@pytest.mark.parametrize("ref", REFS, ids=str)
def test_dash_reads_the_template_as_we_do(ref):
    """Dash matches ``UNIT_TEMPLATE`` against the browser's path and passes its variables to the unit
    page's layout, which reads them with ``unit_ref`` (Dash's own matcher, a private function)."""
    from dash._pages import _parse_path_variables

    variables = _parse_path_variables(routes.unit_href(ref).strip("/"), routes.UNIT_TEMPLATE.strip("/"))
    assert variables is not None and routes.unit_ref(**variables) == ref


def test_plain_ids_stay_as_they_are():
    assert routes.unit_href(UnitRef("L12.mlp", 345)) == "/unit/L12.mlp/345"
    assert routes.unit_href(UnitRef("L3.sae.res-jb", 7)) == "/unit/L3.sae.res-jb/7"


def test_the_template_is_what_dash_passes_to_the_unit_page():
    assert routes.UNIT_TEMPLATE == "/unit/<source_id>/<index>"
    assert routes.unit_ref("L1.mlp", "5") == UnitRef("L1.mlp", 5)
    assert routes.unit_ref("odd%20id", "5") == UnitRef("odd id", 5)


@pytest.mark.parametrize(
    "path",
    [
        None,
        "",
        "/",
        "/unit",
        "/unit/",
        "/unit/L1.mlp",
        "/unit/L1.mlp/",
        "/unit//5",
        "/unit/L1.mlp/-1",
        "/unit/L1.mlp/5x",
        "/unit/L1.mlp/1e3",
        "/unit/L1.mlp/²",  # a digit to str.isdigit, not to int()
        "/unit/L1.mlp/٣",
        "/unit/L1.mlp/5/extra",
        "/units/L1.mlp/5",
        "unit/L1.mlp/5",
        "/sets?name=x",
        "/probe",
    ],
)
def test_other_paths_name_no_unit(path):
    assert routes.parse_unit_path(path) is None


@pytest.mark.parametrize("source_id, index", [(None, "1"), ("L1.mlp", None), ("", "1"), ("L1.mlp", " 1")])
def test_missing_or_bad_variables_name_no_unit(source_id, index):
    assert routes.unit_ref(source_id, index) is None


HOSTILE = [
    '<img src=x onerror="window.__xss=1"> <b>bold</b>',
    "a&name=b",
    "#fragment?x=1",
    "100% / sure",
    "  spaced  ",
    "ünïcode ✓",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_set_names_stay_escaped_in_their_query(name):
    href = routes.set_href(name)
    parts = urlsplit(href)
    assert parts.path == routes.SETS and not parts.fragment
    assert not set(href) & set("<>\"' #&"), "nothing that ends the query or starts markup"
    assert routes.set_name(parse_qs(parts.query, keep_blank_values=True)["name"]) == name


def test_the_sets_page_without_a_name():
    assert routes.set_href() == routes.SETS == "/sets"
    assert routes.set_name(None) is None
    assert routes.set_name(["first", "second"]) == "first"


@pytest.mark.parametrize("ref", REFS, ids=str)
def test_the_current_unit_store_reads_back_as_its_unit(ref):
    assert current_unit.read(current_unit.holder(ref).data) == ref


@pytest.mark.parametrize(
    "data",
    [
        None,
        "L1.mlp/5",
        {},
        {"source_id": "L1.mlp"},
        {"source_id": 1, "unit": 5},
        {"source_id": "L1.mlp", "unit": "5"},
        {"source_id": "L1.mlp", "unit": -1},
        {"source_id": "L1.mlp", "unit": True},
    ],
)
def test_bad_current_unit_data_reads_as_none(data):
    assert current_unit.read(data) is None


# --- attention heads: /heads and /head/<layer>/<head> ------------------------------------------
HEAD_REFS = [UnitRef("L0.attn", 0), UnitRef("L17.attn", 3), UnitRef("L29.attn", 8)]


@pytest.mark.parametrize("ref", HEAD_REFS, ids=str)
def test_a_heads_href_is_its_head_page_and_reads_back(ref):
    from dash._pages import _parse_path_variables

    href = routes.unit_href(ref)
    layer = routes.head_layer(ref.source_id)
    assert href == routes.head_href(layer, ref.unit) == f"/head/{layer}/{ref.unit}"
    assert routes.parse_unit_path(href) == ref and routes.parse_unit_path(href + "/") == ref
    assert routes.unit_source_href(ref.source_id) + str(ref.unit) == href
    variables = _parse_path_variables(href.strip("/"), routes.HEAD_TEMPLATE.strip("/"))
    assert variables is not None and routes.head_ref(**variables) == ref


@pytest.mark.parametrize("source_id", ["L3.mlp", "L3.attn.x", "Lx.attn", "L03.attn", "3.attn", "L3.sae"])
def test_only_sources_of_heads_lead_to_head_pages(source_id):
    assert routes.head_layer(source_id) is None
    assert routes.unit_href(UnitRef(source_id, 1)).startswith(routes.UNIT_PREFIX)


@pytest.mark.parametrize(
    "path",
    ["/head", "/head/", "/head/1", "/head/1/x", "/head/-1/2", "/head/1/2/3", "/head/a/b", "/heads/1/2"],
)
def test_a_path_that_names_no_head_reads_as_none(path):
    assert routes.parse_unit_path(path) is None


def test_the_head_template_is_what_dash_passes_to_the_head_page():
    assert routes.HEADS == "/heads" and routes.HEAD_TEMPLATE == "/head/<layer>/<head>"
    assert routes.head_ref("17", "3") == UnitRef("L17.attn", 3)
    assert routes.head_ref(None, "3") is None and routes.head_ref("1", "") is None
