"""Units (neurodash/units.py): reading unit references and layer lists, and what UnitRef and
Example derive. Bad input is a NeurodashError of one line that says what to write instead."""

from __future__ import annotations

import pytest

from neurodash.errors import NeurodashError
from neurodash.units import (
    NEURON,
    SAE_FEATURE,
    Example,
    Source,
    UnitRef,
    neuron_source_id,
    parse_layers,
    parse_ref,
    sae_source_id,
)

SOURCES = [
    Source("L0.mlp", "m", "blocks.0.mlp.hook_post", NEURON, 0, 8, 100),
    Source("L3.mlp", "m", "blocks.3.mlp.hook_post", NEURON, 3, 8, 100),
    Source("L3.sae.res", "m", "blocks.3.hook_resid_post", SAE_FEATURE, 3, 16, 100, sae="res"),
    Source("L3.sae", "m", "blocks.3.mlp.hook_post", SAE_FEATURE, 3, 4, 100, sae="mlp"),
]


def one_line_error(call, *args) -> str:
    with pytest.raises(NeurodashError) as caught:
        call(*args)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("L12N345", UnitRef("L12.mlp", 345)),
        (" l12 n 345 ", UnitRef("L12.mlp", 345)),
        ("L0N0", UnitRef("L0.mlp", 0)),
        ("L7F3", UnitRef("L7.sae", 3)),  # no sources given: the layer's default SAE name
        ("L12.mlp/345", UnitRef("L12.mlp", 345)),
        ("/unit/L1.sae.res/2", UnitRef("L1.sae.res", 2)),
        ("unit/L1.mlp/2 ", UnitRef("L1.mlp", 2)),
    ],
)
def test_parse_ref_reads_short_and_long_forms(text, ref):
    assert parse_ref(text) == ref


def test_a_short_feature_ref_takes_the_layers_first_sae():
    assert parse_ref("L3F5", SOURCES) == UnitRef("L3.sae.res", 5)
    assert parse_ref("L3.sae/3", SOURCES) == UnitRef("L3.sae", 3)
    assert parse_ref("L3N7", SOURCES) == UnitRef("L3.mlp", 7)
    assert parse_ref("L3H2") == UnitRef("L3.attn", 2)


@pytest.mark.parametrize(
    "text", ["", "neuron 3", "L3", "L3N", "L3X1", "L-1N2", "L1.mlp/", "L1.mlp/-2", "a/b/c"]
)
def test_parse_ref_refuses_what_it_cannot_read(text):
    message = one_line_error(parse_ref, text)
    assert message == f"cannot read unit reference {text!r}: use L12N345, L12F7, L12H3 or <source>/<index>"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("L9N1", "no source 'L9.mlp' in this store"),
        ("L0F1", "no source 'L0.sae' in this store"),
        ("L0N8", "unit 8 is out of range for L0.mlp (0..7)"),
        ("L3.sae/4", "unit 4 is out of range for L3.sae (0..3)"),
    ],
)
def test_parse_ref_checks_against_the_stores_sources(text, message):
    assert one_line_error(parse_ref, text, SOURCES) == message


@pytest.mark.parametrize(
    ("text", "layers"),
    [
        ("0", (0,)),
        ("0-3", (0, 1, 2, 3)),
        ("0,15,29", (0, 15, 29)),
        ("10, 0-2 ,1", (0, 1, 2, 10)),
        ("5-5", (5,)),
    ],
)
def test_parse_layers(text, layers):
    assert parse_layers(text) == layers


@pytest.mark.parametrize("text", ["", "zero", "0-x", "1,,2", "0-1-2", "1.5"])
def test_parse_layers_refuses_what_it_cannot_read(text):
    message = one_line_error(parse_layers, text)
    assert message == f"cannot read layers {text!r}: use ranges and lists such as 0-29 or 0,15,29"


def test_a_backward_range_names_no_layer():
    assert one_line_error(parse_layers, "3-1") == "layers '3-1' names no layer"


def test_source_ids():
    assert neuron_source_id(4) == "L4.mlp"
    assert sae_source_id(4) == "L4.sae" and sae_source_id(4, "res") == "L4.sae.res"


def test_unit_ref_prints_parses_and_sorts():
    ref = UnitRef("L1.sae.res", 12)
    assert str(ref) == "L1.sae.res/12" and parse_ref(str(ref)) == ref
    assert parse_ref("/unit/L1.sae.res/12") == ref  # a unit page's path (app/routes.py builds them)
    assert sorted([UnitRef("L1.mlp", 10), UnitRef("L0.mlp", 3), UnitRef("L1.mlp", 2)]) == [
        UnitRef("L0.mlp", 3),
        UnitRef("L1.mlp", 2),
        UnitRef("L1.mlp", 10),
    ]
    assert len({UnitRef("L1.mlp", 2), UnitRef("L1.mlp", 2)}) == 1


def test_example_reads_its_peak_from_the_window():
    """A window starting at position 5 of its sequence, its max token at position 7."""
    example = Example(
        ref=UnitRef("L0.mlp", 1),
        bucket="top",
        rank=0,
        seq_id=4,
        pos=7,
        start=5,
        tokens=("def", " f", "(", "x", ")"),
        token_ids=(10, 11, 12, 13, 14),
        acts=(0.1, -0.2, 2.5, 0.3, 0.0),
    )
    assert example.peak == 2
    assert example.value == 2.5 and example.max_token == "("
    assert example.text == "def f(x)"


def test_sources_compare_without_their_config():
    a = Source("L0.mlp", "m", "blocks.0.mlp.hook_post", NEURON, 0, 8, 100, config={"x": 1})
    b = Source("L0.mlp", "m", "blocks.0.mlp.hook_post", NEURON, 0, 8, 100, config={"x": 2})
    assert a == b and hash(a) == hash(b)
