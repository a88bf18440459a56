"""Sealed artifacts: every file hashed, paths inside the folder, the manifest's schema checked
first, and an unverified artifact refused unless asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from par_export.artifact.manifest import sha256
from par_export.cli import main

PROMPT = "USER: <image> what color is the square?"


@pytest.fixture(scope="module")
def built(tiny_artifact):
    return tiny_artifact


@pytest.fixture
def art(built, tmp_path):
    """A fresh copy of the built artifact to tamper with."""
    copy = tmp_path / "art"
    shutil.copytree(built[0], copy)
    return copy


def run(art: Path, image: Path, capsys, *extra) -> tuple[int, str]:
    rc = main(["run", str(art), "--image", str(image), "--prompt", PROMPT, "--heatmap", str(art.parent / "h.png"),
               *extra])
    return rc, capsys.readouterr().err


def edit_manifest(art: Path, change) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    change(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))


def test_every_file_is_sealed_and_verification_recorded(art):
    manifest = json.loads((art / "manifest.json").read_text())
    files = sorted(str(p.relative_to(art)) for p in art.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert any(f.startswith("processor/") for f in files) and any(f.startswith("tokenizer/") for f in files)
    assert manifest["verification"]["passed"] is True and manifest["verification"]["rows"]


def test_an_intact_artifact_runs(art, built, capsys):
    assert run(art, built[1], capsys) == (0, "")


@pytest.mark.parametrize("edit, message", [
    (lambda a: (a / "processor" / "processor_config.json").write_text(
        (a / "processor" / "processor_config.json").read_text().replace("0.48145466", "0.1")), "sha256 differs"),
    (lambda a: (a / "tokenizer" / "added.py").write_text("print('hi')"), "not in manifest.json"),
    (lambda a: (a / "vision_par.ort.onnx").write_bytes(b""), "sha256 differs"),
    (lambda a: (a / "onnx" / "vision_par.onnx").unlink(), "missing or not a plain file"),
])
def test_edited_added_or_removed_files_are_refused(art, built, capsys, edit, message):
    edit(art)
    rc, err = run(art, built[1], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_paths_outside_the_folder_are_refused_even_with_matching_hashes(art, built, capsys):
    outside = art.parent / "outside.onnx"
    shutil.copy(art / "vision_par.ort.onnx", outside)
    digest = sha256(outside)

    def escape(name):
        def change(m):
            m["files"][name] = digest
            m["graphs"]["vision_par"]["file"] = name
            m["graphs"]["vision_par"]["sha256"] = digest
        return change

    for name in ("../outside.onnx", str(outside)):
        copy = art.parent / f"copy-{len(name)}"
        shutil.copytree(art, copy)
        edit_manifest(copy, escape(name))
        rc, err = run(copy, built[1], capsys)
        assert rc == 2 and "must be relative and inside the artifact" in err, err
    edit_manifest(art, lambda m: m["graphs"]["vision_par"].update(source="../outside.onnx"))
    assert main(["verify", str(art)]) == 2
    assert "must be relative and inside the artifact" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(backend="bogus"), "backend 'bogus' is not one of"),
    (lambda m: m.update(precision="fp64"), "precision 'fp64' is not one of"),
    (lambda m: m.pop("graphs"), "field 'graphs' must be a dict"),
    (lambda m: m["metadata"].pop("width"), "metadata.width is missing"),
    (lambda m: m.update(format=1), "manifest format 1, this par-export reads 2"),
])
def test_manifest_schema_is_checked_first(art, built, capsys, change, message):
    edit_manifest(art, change)
    rc, err = run(art, built[1], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_manifest_that_is_not_an_object_is_one_clear_error(art, built, capsys):
    (art / "manifest.json").write_text("[1, 2]")
    rc, err = run(art, built[1], capsys)
    assert rc == 2 and "expected a JSON object" in err


def test_an_unverified_artifact_is_refused_unless_allowed(art, built, capsys):
    edit_manifest(art, lambda m: m["verification"].update(passed=False))
    rc, err = run(art, built[1], capsys)
    assert rc == 2 and "verification failed" in err and "--allow-unverified" in err
    assert run(art, built[1], capsys, "--allow-unverified")[0] == 0
    edit_manifest(art, lambda m: m.pop("verification"))
    assert "verification was not run" in run(art, built[1], capsys)[1]
    # `verify` re-checks it and records the result: then it runs
    assert main(["verify", str(art), "-n", "1"]) == 0
    assert json.loads((art / "manifest.json").read_text())["verification"]["passed"] is True
    assert run(art, built[1], capsys)[0] == 0


def test_run_does_not_write_into_the_artifact(art, built, capsys):
    rc = main(["run", str(art), "--image", str(built[1]), "--prompt", PROMPT, "--heatmap", str(art / "h.png")])
    assert rc == 2 and "whose files are sealed" in capsys.readouterr().err and not (art / "h.png").exists()
