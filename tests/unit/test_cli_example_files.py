"""Default example files (price book, serving table) are found from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenpulse.cli._common import example_file


def test_the_working_directory_copy_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "pricebook.toml").write_text("# mine\n")
    monkeypatch.chdir(tmp_path)
    assert example_file("pricebook.toml") == Path("examples/pricebook.toml")


def test_elsewhere_the_projects_own_copy_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("pricebook.toml", "serving.toml"):
        found = example_file(name)
        assert found.is_absolute()
        assert found.is_file()
        assert found.parent.name == "examples"


def test_a_missing_file_names_the_working_directory_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert example_file("no-such.toml") == Path("examples/no-such.toml")
