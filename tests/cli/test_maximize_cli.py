"""``neurodash maximize`` on the tiny Llama's store: JSON output equal to the results file, a units
file, bad input as one clear line and exit status 2."""

from __future__ import annotations

import json

import pytest
from tiny_llama import strongest_unit

from neurodash.cli import main
from neurodash.results import frontier_from_json
from neurodash.storage.maximize import MaximizeResults, results_path


def test_cli_json_matches_the_results_file(tiny_store, capsys):

    ref = strongest_unit(tiny_store, "L1.mlp")
    results_path(tiny_store).unlink(missing_ok=True)
    assert (
        main(
            ["maximize", str(tiny_store), "--unit", f"{ref},L1F0", "--length", "5", "--steps", "2", "--json"]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert [p["unit"] for p in printed] == [ref, "L1.sae/0"]
    saved = MaximizeResults.beside(tiny_store).all()
    assert len(saved) == 2
    for data, frontier in zip(printed, saved):
        assert data["steps"] == 2 and data["length"] == 5
        assert all(set(p) >= {"token_ids", "text", "activation", "cross_entropy"} for p in data["frontier"])
        again = frontier_from_json(data)
        assert (again.ref, again.prompts, again.corpus_max, again.settings) == (
            frontier.ref,
            frontier.prompts,
            frontier.corpus_max,
            frontier.settings,
        )
    assert MaximizeResults.beside(tiny_store).latest(saved[0].ref) == saved[0]

    assert main(["maximize", str(tiny_store), "--unit", ref, "--steps", "1", "--length", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{ref}: corpus max") and "activation" in out
    assert len(MaximizeResults.beside(tiny_store).all()) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--unit", "L1N999"], "out of range"),
        (["--unit", "L7N1"], "no source"),
        ([], "--unit"),
        (["--unit", "L1N1", "--length", "0"], "--length"),
        (["--unit", "L1N1", "--steps", "-1"], "--steps"),
        (["--units-file", "/no/such/file"], "--units-file"),
    ],
)
def test_cli_bad_input(tiny_store, capsys, args, message):

    assert main(["maximize", str(tiny_store), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_cli_missing_store(tmp_path, capsys):

    assert main(["maximize", str(tmp_path / "none.duckdb"), "--unit", "L1N1"]) == 2
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "none.maximize.duckdb").exists()


def test_units_file_and_results_round_trip(tiny_store, tmp_path, capsys):

    units = tmp_path / "units.txt"
    units.write_text("# two units\nL1N3\nL0N2, L1F1\n")
    out = tmp_path / "mine.duckdb"
    assert (
        main(
            [
                "maximize",
                str(tiny_store),
                "--units-file",
                str(units),
                "--steps",
                "1",
                "--length",
                "3",
                "--results",
                str(out),
            ]
        )
        == 0
    )
    runs = MaximizeResults(out).all()
    assert [str(r.ref) for r in runs] == ["L1.mlp/3", "L0.mlp/2", "L1.sae/1"]
    assert all(r.prompts and r.created_at is not None for r in runs)
    assert MaximizeResults(tmp_path / "absent.duckdb").all() == []
