"""The artifact layer: typed export metadata (checked once, one error per bad key), the one budget
rule, and Artifact, which run, the pipeline and the service open instead of copies of their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from par_export.artifact import Artifact, Budget, ExportMetadata, MetadataError, parse_budget, read_manifest
from par_export.cli import main
from par_export.engine.run import run_image
from par_export.errors import ParExportError
from par_export.reduce import reducer_class

PROMPT = "USER: <image> what color is the square?"


@pytest.fixture(scope="module")
def built(tiny_artifact):
    return tiny_artifact


def test_metadata_round_trips_and_types_its_fields(built):
    meta = read_manifest(built[0]).metadata
    assert isinstance(meta, ExportMetadata) and meta.family == "llava" and meta.budget_input
    assert ExportMetadata.from_json(meta.to_json()) == meta
    assert meta.query is not None and meta.query.max_length >= 1 and meta.export.batch_max >= 1
    assert meta.budget_rule == Budget("input", meta.budget, meta.width)


@pytest.mark.parametrize("key, value, message", [
    ("width", -1, "metadata.width must be in [1,"),
    ("width", "abc", "metadata.width must be int"),
    ("width", True, "metadata.width must be int"),
    ("image_size", 0, "metadata.image_size must be in [1,"),
    ("image_size", 100_000, "metadata.image_size must be in [1,"),
    ("budget", 1e9, "metadata.budget must be int"),
    ("query_dim", None, "metadata.query_dim must be int"),
    ("space", "pixels", "metadata.space must be 'clip' or 'llm'"),
    ("export", {"opset": 17, "fp16": "no", "batch_max": 8}, "metadata.export.fp16 must be bool"),
    ("metadata_version", 0, "metadata_version 0, this par-export reads 1"),
])
def test_bad_metadata_is_one_error_naming_the_key(built, key, value, message):
    data = read_manifest(built[0]).metadata.to_json()
    data[key] = value
    with pytest.raises(MetadataError, match=message.replace("[", r"\[")):
        ExportMetadata.from_json(data)


@pytest.mark.parametrize("key, value", [("width", -1), ("image_size", 100_000), ("budget", 1e9), ("width", "abc")])
def test_run_refuses_an_artifact_whose_metadata_is_out_of_range(built, tmp_path, capsys, key, value):
    """The manifest is resealed by hand after the edit: only the typed check can catch it."""
    art = tmp_path / "art"
    shutil.copytree(built[0], art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["metadata"][key] = value
    (art / "manifest.json").write_text(json.dumps(manifest))
    rc = main(["run", str(art), "--image", str(built[1]), "--prompt", PROMPT, "--heatmap", str(tmp_path / "h.png")])
    err = capsys.readouterr().err
    assert rc == 2 and f"metadata.{key}" in err and len(err.strip().splitlines()) == 1, err


def test_one_budget_rule():
    assert parse_budget("auto") == "auto" and parse_budget("12") == 12
    for bad in ("0", "-3", "x", "1.5", True):
        with pytest.raises(ParExportError):
            parse_budget(bad)
    graph = Budget("input", 16, 64)
    assert int(graph.feed()) == 16 and int(graph.feed(64)) == 64 and graph.traced == "input"
    with pytest.raises(ParExportError, match=r"in \[1, 64\]"):
        graph.feed(65)
    with pytest.raises(ParExportError, match="fixed K"):
        graph.feed("auto")
    adaptive = Budget.for_export(reducer_class("par"), "auto", 64)
    assert adaptive.mode == "auto" and adaptive.feed() is None and adaptive.feed("auto") is None
    with pytest.raises(ParExportError, match="chooses K itself"):
        adaptive.feed(8)
    pool = Budget.for_export(reducer_class("pool"), 16, 16)
    assert pool.mode == "fixed" and pool.traced == 16 and pool.feed(16) is None
    with pytest.raises(ParExportError, match="no adaptive budget"):
        Budget.for_export(reducer_class("pool"), "auto")


def test_artifact_reduce_is_what_run_gives(built):
    art, image = built
    with Artifact.open(art) as artifact:
        (reduced,) = artifact.reduce([Image.open(image).convert("RGB")], [PROMPT], budget=8)
    alone = run_image(art, image, PROMPT, budget=8)
    assert reduced.num_kept == alone["num_kept"] == 8 and reduced.keep_index.tolist() == alone["keep_index"]
    np.testing.assert_allclose(reduced.image_embeds, alone["image_embeds"], atol=1e-6)
    assert reduced.query == alone["query"] and reduced.num_tokens == alone["tokens_per_image"]


def test_a_programming_error_is_internal_not_a_user_error(built, monkeypatch, capsys):
    """main catches ParExportError (rc 2); anything else is a bug (rc 3, --debug shows it)."""
    import par_export.cli.engine as run_module

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(run_module, "run_image", broken)
    rc = main(["run", str(built[0]), "--image", str(built[1]), "--prompt", PROMPT])
    assert rc == 3 and "internal error: TypeError: a bug" in capsys.readouterr().err
    with pytest.raises(TypeError):
        main(["--debug", "run", str(built[0]), "--image", str(built[1]), "--prompt", PROMPT])


def test_build_writes_engines_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--model", "tiny", "--precision", "fp32", "--backend", "onnxruntime"]) == 0
    assert "in engines/tiny-fp32/" in capsys.readouterr().out
    assert read_manifest(Path("engines/tiny-fp32")).precision == "fp32"


def test_a_repeated_question_is_encoded_once(built):
    """The query embedding is cached by the rewritten prompt (bounded, least recently used out):
    the same question about many images runs the query encoder once, with the same result."""
    art, _ = built
    artifact = Artifact.open(art)
    runner = artifact.runners["query_encoder"]
    calls = []

    class Counting:  # the real runner, counted
        def infer(self, feed):
            calls.append(1)
            return runner.infer(feed)

    with artifact:
        first, query = artifact.query.embed("what colour is the square ?", Counting())
        again, _ = artifact.query.embed("what colour is the square ?", Counting())
        assert len(calls) == 1 and np.array_equal(first, again) and query
        artifact.query.CACHE_SIZE = 2
        for prompt in ("where is the circle ?", "how many stars ?"):
            artifact.query.embed(prompt, Counting())
        assert len(calls) == 3
        fresh, _ = artifact.query.embed("what colour is the square ?", Counting())  # dropped: least recent
        assert len(calls) == 4 and np.allclose(fresh, first)
