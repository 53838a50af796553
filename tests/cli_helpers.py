"""Helpers for the command-line tests: bad input is one clear line, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path


def assert_failed(code: int, err: str, fragment: str, *paths: Path) -> None:
    """Exit status 2, one ``error:`` line holding ``fragment``, and none of ``paths`` (nor its
    ``.partial``) written."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and fragment in lines[0], err
    for p in paths:
        assert not p.exists(), f"{p} was written"
        assert not Path(str(p) + ".partial").exists()
