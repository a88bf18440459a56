"""Output folders: nothing outside --out is touched, nothing is lost, two writers never mix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from par_export.cli import main
from par_export.files import MARKER, atomic_folder, check_out


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_out_dot_with_overwrite_is_refused_and_nothing_is_deleted(tmp_path, monkeypatch, capsys):
    (tmp_path / "precious").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--model", "tiny", "--out", ".", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is the current folder" in err and len([line for line in err.splitlines() if "error:" in line]) == 1
    assert tree(tmp_path) == {"precious": b"keep me"}


@pytest.mark.parametrize("where", ["/", "~", ".."])
def test_root_home_and_parents_are_refused(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="refusing to write over|holds it"):
        check_out(where)


def test_a_folder_holding_the_input_is_refused(tmp_path, capsys):
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "models"), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err and model.is_dir()


def test_a_file_or_a_symlink_at_out_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for name, message in [("file", "is a file"), ("link", "symbolic link")]:
        assert main(["build", "--model", "tiny", "--out", str(tmp_path / name), "--overwrite"]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "link").is_symlink()


def test_overwrite_replaces_only_our_folders(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="replaces only a folder par-export wrote"):
        with atomic_folder(foreign, True, ValueError) as (final, _):
            (final / "a").write_text("new")
    assert tree(foreign) == {"notes.txt": b"mine"}

    ours = tmp_path / "ours"
    with atomic_folder(ours, False, ValueError) as (final, _):
        (final / "a").write_text("1")
    with atomic_folder(ours, True, ValueError) as (final, _):
        (final / "b").write_text("2")
    assert sorted(tree(ours)) == [MARKER, "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty, True, ValueError) as (final, _):
        (final / "c").write_text("3")
    assert sorted(tree(empty)) == [MARKER, "c"]


def test_a_folder_that_appears_meanwhile_is_kept_and_the_write_fails(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        with atomic_folder(target, False, ValueError) as (final, _):
            (final / "a").write_text("ours")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert tree(target) == {"theirs": b"theirs"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no scratch folder, no lock file


def test_a_second_writer_fails_while_the_first_writes(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target, False, ValueError) as (final, _):
        (final / "first").write_text("1")
        with pytest.raises(ValueError, match="another par-export process is writing it"):
            with atomic_folder(target, True, ValueError):
                pass
    assert sorted(tree(target)) == [MARKER, "first"]


def test_a_killed_runs_scratch_and_lock_are_removed_by_the_next_run(tmp_path):
    stale = tmp_path / ".out.tmp-abc123"
    (stale / "final").mkdir(parents=True)
    (tmp_path / ".out.lock").write_text("")
    with atomic_folder(tmp_path / "out", False, ValueError) as (final, _):
        (final / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target, False, ValueError) as (final, _):
        (final / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target, True, ValueError) as (final, _):
            (final / "v2").write_text("2")
            raise RuntimeError("build failed")
    assert sorted(tree(target)) == [MARKER, "v1"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_output_inside_a_sealed_artifact_is_refused(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    with pytest.raises(ValueError, match="inside the artifact"):
        with atomic_folder(art / "emitted", False, ValueError, sealed=[art]):
            pass
    assert sorted(p.name for p in art.iterdir()) == []
