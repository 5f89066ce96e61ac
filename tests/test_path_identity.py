"""Output checks compare files, not spellings: another name for an input (a case alias on a case-insensitive file
system, a link) is that input, and is never replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from weibo_sentiment.errors import UserError
from weibo_sentiment.output import check_output_dir, check_output_file


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def case_insensitive(monkeypatch):
    """Make `alias` another spelling of `real`, as on a case-insensitive file system (macOS, Windows): the same
    directory, which `Path.resolve` leaves as spelled and which is no link. A symbolic link stands in for it,
    hidden the way such a file system hides an alias."""

    def make(alias: Path, real: Path) -> Path:
        alias.symlink_to(real, target_is_directory=real.is_dir())
        real_is_symlink = Path.is_symlink
        monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))
        monkeypatch.setattr(Path, "is_symlink", lambda self: False if self == alias else real_is_symlink(self))
        return alias

    return make


def test_combine_refuses_an_output_that_is_its_input_by_another_spelling(tmp_path, adapter_copy, cli,
                                                                         case_insensitive):
    alias = case_insensitive(tmp_path / "ADAPTER", adapter_copy)
    before = snapshot(adapter_copy)
    r = cli("combine", "--adapter", f"one={adapter_copy}", "--adapter", f"two={adapter_copy}", "--output", alias)
    assert r.code == 2
    assert r.err.strip().splitlines()[-1].startswith(f"error: {alias}: is this command's input")
    assert snapshot(adapter_copy) == before


def test_an_output_holding_an_input_by_another_spelling_is_refused(tmp_path, case_insensitive):
    real = tmp_path / "runs"
    (real / "data").mkdir(parents=True)
    (real / "data" / "posts.csv").write_text("review\n好\n")
    alias = case_insensitive(tmp_path / "RUNS", real)
    with pytest.raises(UserError, match="holds this command's input"):
        check_output_dir(alias, "adapter", [("the --data file", real / "data" / "posts.csv")])


def test_hard_links_and_symbolic_links_are_the_same_file(tmp_path):
    from weibo_sentiment.output import holds, same_file

    data = tmp_path / "posts.csv"
    data.write_text("label_name,confidence\n")
    (tmp_path / "hard.csv").hardlink_to(data)
    (tmp_path / "soft").symlink_to(tmp_path, target_is_directory=True)
    assert same_file(tmp_path / "hard.csv", data) and same_file(tmp_path / "soft" / "posts.csv", data)
    assert holds(tmp_path / "soft", data) and not holds(tmp_path / "soft" / "posts.csv", tmp_path)
    assert not same_file(tmp_path / "missing.csv", data) and same_file(tmp_path / "new", tmp_path / "." / "new")
    with pytest.raises(UserError, match="is this command's input"):
        check_output_file(tmp_path / "hard.csv", "predictions", inputs=[data])
