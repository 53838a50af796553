"""``neurodash lab`` on the tiny Llama's store: the text report and JSON, the run saved beside the
store, and every kind of bad input as one clear line, exit status 2, nothing saved."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_failed

from neurodash.cli import main
from neurodash.lab_run import LabRun
from neurodash.storage.lab import LabRuns, lab_path


def test_lab_prints_every_section_and_saves_the_run(tiny_store, capsys):
    lab_path(tiny_store).unlink(missing_ok=True)
    code = main(
        ["lab", str(tiny_store), "--prompt", "A B A B A", "--prompt", "X Y X Y X", "--steer", "L1N5=2"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    for part in (
        "'A B A B A' ->",
        "top direct logit attribution",
        "ablation (mean)",
        "patching heads",
        "minimal circuit",
        "steering L1N5=2",
    ):
        assert part in out
    assert f"saved run 1 in {lab_path(tiny_store)}" in err
    (saved,) = LabRuns.beside(tiny_store).list()
    assert saved.prompts == ("A B A B A", "X Y X Y X") and saved.query["steer"] == ["L1N5=2"]


def test_lab_json_is_the_saved_run(tiny_store, tmp_path, capsys):
    results = tmp_path / "runs.lab.duckdb"
    args = ["lab", str(tiny_store), "--prompt", "A B A B A", "--answer", " B", "--counterfactual", " A"]
    assert (
        main([*args, "--corrupt", "A C A C A", "--ablation", "zero", "--results", str(results), "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    run = LabRun.from_json(printed)
    saved = LabRuns(results).get(printed["run_id"])
    assert saved is not None and saved.prompts == run.prompts and saved.circuit == run.circuit
    assert run.prompts[0].answer == " B" and run.prompts[0].counterfactual == " A"
    assert run.ablation.kind == "zero" and run.settings.corrupted == ("A C A C A",)


BAD = [
    ([], "give at least one prompt"),
    (["--prompt", "  "], "prompt 1 is empty"),
    (["--prompt", "a " * 400], "reads at most 256"),
    (["--prompt", "A B A B A", "--answer", " Bxyzzy"], "is not one token: it splits into"),
    (["--prompt", "A B A B A", "--corrupt", "A B"], "patching position by position needs equal lengths"),
    (
        ["--prompt", "A B A B A", "--prompt", "X Y", "--corrupt", "", "--corrupt", "X Y X"],
        "prompt 2: corrupted",
    ),
    (["--prompt", "A B A B A", "--steer", "L7N3=1"], "no source 'L7.mlp'"),
    (["--prompt", "A B A B A", "--steer", "L1N99999=1"], "out of range"),
    (["--prompt", "A B A B A", "--steer", "L9H0=1"], "no head L9H0"),
    (["--prompt", "A B A B A", "--steer", "L1N5=abc"], "'abc' of L1N5 is not a number"),
    (["--prompt", "A B A B A", "--steer", "L1N5=nan"], "must be a finite number"),
    (["--prompt", "A B A B A", "--steer", "L1N5"], "use UNIT=COEFFICIENT"),
    (["--prompt", "A B A B A", "--ablation", "gentle"], "unknown ablation 'gentle'"),
    (["--prompt", "A B A B A", "--corruption", "shuffle"], "unknown corruption 'shuffle'"),
    (["--prompt", "A B A B A", "--tokens", "many"], "--tokens 'many' is not a whole number"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_and_saves_nothing(tiny_store, tmp_path, capsys, args, fragment):
    results = tmp_path / "runs.lab.duckdb"
    code = main(["lab", str(tiny_store), *args, "--results", str(results)])
    assert_failed(code, capsys.readouterr().err, fragment, results)


def test_missing_store_is_one_line(tmp_path, capsys):
    code = main(["lab", str(tmp_path / "none.duckdb"), "--prompt", "A B"])
    assert_failed(code, capsys.readouterr().err, "none.duckdb", lab_path(tmp_path / "none.duckdb"))


def test_steering_with_an_sae_feature(tiny_store, tmp_path, capsys):
    results = tmp_path / "runs.lab.duckdb"
    assert (
        main(
            [
                "lab",
                str(tiny_store),
                "--prompt",
                "A B A B A",
                "--steer",
                "L1F0=3",
                "--results",
                str(results),
                "--json",
            ]
        )
        == 0
    )
    run = LabRun.from_json(json.loads(capsys.readouterr().out))
    (steering,) = run.steering
    assert steering.label == "L1.sae/0" and steering.source_id == "L1.sae" and steering.run.coefficient == 3.0
    assert steering.sweep.unit_activation is None and len(steering.sweep.coefficients) == len(
        steering.sweep.answer_prob
    )
    assert 3.0 in steering.sweep.coefficients and 0.0 in steering.sweep.coefficients
