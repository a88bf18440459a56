"""Fuzzing the public surfaces with seeded generators: the reducer API and ``par_export.cli.main``.

Every call must give a correct result or one clean error: for the reducers a ``ValueError`` /
``TypeError`` naming the argument, for the CLI exit code 2 with one ``error:`` line; never a
traceback, never exit 0 for a tampered artifact, never a file changed outside ``--out``.
The default run is fast; ``-m slow`` runs 10,000 reducer inputs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from par_export.cli import main
from par_export.reduce import ReductionOutput, available_methods, create_reducer

METHODS = sorted(available_methods())
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- reducer API
def valid_case(rng: random.Random) -> dict:
    """A well-formed call: ``[B, N, D]`` floats with their prompt, mask, CLS attention and budget."""
    b, n, d = rng.choice([1, 2, 3]), rng.choice([2, 5, 16, 37, 64]), rng.choice([4, 8])
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    tokens = torch.randn(b, n, d, generator=gen)
    if rng.random() < 0.1:
        tokens = tokens * 3.0e38  # finite, near the float32 maximum
    elif rng.random() < 0.1:
        tokens = torch.zeros(b, n, d)  # all tokens equal
    if n == 64 and rng.random() < 0.5:
        tokens = tokens.to(rng.choice([torch.float16, torch.bfloat16]))
    return {"visual_tokens": tokens, "prompt_embedding": torch.randn(b, 3, d, generator=gen),
            "attn": torch.softmax(torch.randn(b, n, generator=gen), -1), "prompt_mask": None,
            "budget": rng.choice([1, 2, min(n, 4), n, "auto"])}


# zero-size axes (issue 31: a feature width of 0 reached amax() on an empty dimension)
ZERO_SIZE = {
    "visual_tokens D=0": lambda c, r: c.update(visual_tokens=c["visual_tokens"][..., :0]),
    "visual_tokens B=0": lambda c, r: c.update(visual_tokens=c["visual_tokens"][:0], attn=c["attn"][:0],
                                               prompt_embedding=c["prompt_embedding"][:0]),
    "prompt_embedding Dq=0": lambda c, r: c.update(prompt_embedding=c["prompt_embedding"][..., :0]),
    "prompt_embedding P=0": lambda c, r: c.update(prompt_embedding=c["prompt_embedding"][:, :0]),
}

PERTURBATIONS = [
    lambda c, r: c.update(visual_tokens=r.choice([None, 3, "tokens", [[1.0]], np.ones((1, 4, 4), np.float32)])),
    lambda c, r: c.update(visual_tokens=c["visual_tokens"][0]),  # rank 2
    lambda c, r: c.update(visual_tokens=c["visual_tokens"].unsqueeze(0)),  # rank 4
    lambda c, r: c.update(visual_tokens=c["visual_tokens"][:, :1]),  # N = 1
    lambda c, r: c.update(visual_tokens=c["visual_tokens"][:, :0]),  # N = 0
    lambda c, r: c.update(visual_tokens=c["visual_tokens"].to(r.choice([torch.int64, torch.bool, torch.float64]))),
    lambda c, r: c["visual_tokens"].view(-1).__setitem__(0, r.choice([float("nan"), float("inf")])),
    lambda c, r: c.update(prompt_embedding=c["prompt_embedding"][..., :-1]),  # other width
    lambda c, r: c.update(prompt_embedding=torch.cat([c["prompt_embedding"]] * 2)),  # other batch
    lambda c, r: c.update(prompt_embedding=c["prompt_embedding"][0]),  # rank 2
    lambda c, r: c.update(prompt_embedding=None, attn=None),
    lambda c, r: c.update(attn=c["attn"][:, :-1]),
    lambda c, r: c.update(attn=c["attn"][0]),
    lambda c, r: c.update(prompt_mask=torch.zeros(c["prompt_embedding"].shape[:2], dtype=torch.bool), attn=None),
    lambda c, r: c.update(prompt_mask=torch.ones(1, 7, dtype=torch.bool)),
    lambda c, r: c.update(budget=r.choice([0, -1, 10 ** 6, "all", 2.0, True, torch.tensor([3]), torch.tensor(2.0),
                                           torch.tensor(0)])),
    *ZERO_SIZE.values(),
]


def check_output(out: ReductionOutput, tokens: torch.Tensor) -> None:
    b, n = tokens.shape[:2]
    k = out.num_kept
    assert out.tokens.shape[0] == b and out.assignment.shape == (b, n)
    assert bool(torch.isfinite(out.tokens.float()).all()), "finite inputs must give finite outputs"
    assert bool((k >= 1).all()) and bool((k <= out.keep_index.shape[1]).all())
    for i in range(b):
        kept = out.keep_index[i, : int(k[i])]
        assert bool((kept >= 0).all()) and bool((kept < n).all()) and bool((kept[1:] > kept[:-1]).all())


def fuzz_reducers(count: int, seed: int) -> dict:
    """Half the calls well-formed, half with one thing wrong: a correct output or a clean refusal."""
    rng = random.Random(seed)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(count):
        method = rng.choice(METHODS)
        case = valid_case(rng)
        if rng.random() < 0.5:
            rng.choice(PERTURBATIONS)(case, rng)
        try:
            out = create_reducer(method)(**case)
        except (ValueError, TypeError) as err:
            assert str(err), "an error must say what was wrong"
            outcomes["refused"] += 1
            continue
        check_output(out, case["visual_tokens"])
        outcomes["ok"] += 1
    return outcomes


@pytest.mark.parametrize("method", METHODS)
def test_every_reducer_refuses_zero_size_axes_naming_the_argument(method):
    for name, edit in ZERO_SIZE.items():
        case = valid_case(random.Random(3))
        case["visual_tokens"], case["budget"] = torch.randn(2, 16, 8), 4
        case["prompt_embedding"], case["attn"] = torch.randn(2, 3, 8), torch.softmax(torch.randn(2, 16), -1)
        edit(case, random.Random(0))
        with pytest.raises(ValueError, match=name.split()[0]):
            create_reducer(method)(**case)


def test_reducer_api_fuzz_fast():
    outcomes = fuzz_reducers(600, seed=0)
    assert outcomes["ok"] > 50 and outcomes["refused"] > 50, outcomes  # both paths exercised


@pytest.mark.slow
def test_reducer_api_fuzz_10000():
    outcomes = fuzz_reducers(10_000, seed=1)
    assert outcomes["ok"] > 1000 and outcomes["refused"] > 1000, outcomes


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A built tiny artifact, its export, and an image, in one folder whose tree the tests snapshot."""
    root = tmp_path_factory.mktemp("fuzz")
    assert main(["export", "--model", "tiny", "--out", str(root / "onnx"), "--budget", "16"]) == 0
    assert main(["build", str(root / "onnx"), "--precision", "fp32", "--backend", "onnxruntime",
                 "--out", str(root / "art")]) == 0
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(root / "scene.png")
    return root


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def call(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)``: exit code and stderr, with argparse's SystemExit turned into its code."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if rc == 2:
        lines = [line for line in err.strip().splitlines() if "error:" in line]
        assert len(lines) == 1, f"{argv}: expected one error line, got {err!r}"
    return rc, err


def bad_images(folder: Path) -> list[Path]:
    paths = {"empty.png": b"", "text.png": b"not an image at all", "truncated.png": None, "dir.png": None}
    out = []
    for name, data in paths.items():
        path = folder / name
        if name == "dir.png":
            path.mkdir(exist_ok=True)
        elif data is None:
            Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(path)
            path.write_bytes(path.read_bytes()[:40])
        else:
            path.write_bytes(data)
        out.append(path)
    bomb = folder / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb, optimize=True)
    return out + [bomb, folder / "missing.png"]


def test_cli_bad_images_and_flags_give_one_line_and_touch_nothing(world, tmp_path, capsys):
    before = snapshot(world)
    art, image = world / "art", world / "scene.png"
    for bad in bad_images(tmp_path):
        rc, err = call(["run", str(art), "--image", str(bad), "--prompt", "a red square",
                        "--heatmap", str(tmp_path / "h.png")], capsys)
        assert rc == 2, (bad, err)
    flags = {"run": ["--budget"], "verify": ["-n"], "flops": ["--budget", "--auto-k"], "reduce": ["--k-max", "--batch"],
             "export": ["--k-max", "--opset", "--batch-max", "--budget"], "build": ["--min-batch", "--max-batch",
                                                                                    "--workspace", "--dla-core"]}
    for command, names in flags.items():
        for name in names:
            for value in ["0", "-3", "x", "1e9", ""] + (["999999999999"] if command in ("run", "verify", "flops") else []):
                argv = {"run": ["run", str(art), "--image", str(image), "--prompt", "p"], "verify": ["verify", str(art)],
                        "flops": ["flops"], "reduce": ["reduce", "--out", str(tmp_path / "r")],
                        "export": ["export", "--model", "tiny", "--out", str(tmp_path / "e")],
                        "build": ["build", "--model", "tiny", "--out", str(tmp_path / "b"), "--print-trtexec"]}[command]
                if name == "--dla-core" and value == "0":
                    continue  # DLA core 0 exists
                rc, err = call(argv + [name, value], capsys)
                assert rc == 2, (command, name, value, err)  # out of range for every one of these flags
    assert snapshot(world) == before


def corruptions(art: Path, rng: random.Random):
    """(name, edit of a copy of the artifact) pairs: bit flips in sealed files, manifest edits,
    traversal paths."""
    files = sorted(p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file() and p.name != "manifest.json")

    def flip(name):
        def edit(folder):
            path = folder / name
            data = bytearray(path.read_bytes())
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                data = bytearray(b"x")
            path.write_bytes(bytes(data))
        return edit

    def manifest_edit(change):
        def edit(folder):
            manifest = json.loads((folder / "manifest.json").read_text())
            change(manifest)
            (folder / "manifest.json").write_text(json.dumps(manifest))
        return edit

    for name in rng.sample(files, min(6, len(files))):
        yield f"flip {name}", flip(name)
    yield "truncate manifest", lambda f: (f / "manifest.json").write_text((f / "manifest.json").read_text()[:100])
    yield "manifest list", lambda f: (f / "manifest.json").write_text("[]")
    for key in ("graphs", "metadata", "files", "backend", "precision", "format"):
        yield f"drop {key}", manifest_edit(lambda m, key=key: m.pop(key))
        yield f"retype {key}", manifest_edit(lambda m, key=key: m.update({key: [1]}))
    yield "traversal file", manifest_edit(lambda m: m["graphs"]["vision_par"].update(file="../../etc/passwd"))
    yield "absolute source", manifest_edit(lambda m: m["graphs"]["vision_par"].update(source="/etc/passwd"))
    yield "traversal files", manifest_edit(lambda m: m["files"].update({"../x": "0" * 64}))
    yield "bogus backend", manifest_edit(lambda m: m.update(backend="bogus"))
    yield "extra file", lambda f: (f / "tokenizer" / "tokenizer.py").write_text("import os")


def test_cli_tampered_artifacts_are_refused_with_one_line(world, tmp_path, capsys):
    rng = random.Random(1)
    before = snapshot(world)
    art, image = world / "art", world / "scene.png"
    for name, edit in corruptions(art, rng):
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(art, copy)
        edit(copy)
        for argv in (["run", str(copy), "--image", str(image), "--prompt", "red", "--heatmap", str(tmp_path / "h.png")],
                     ["verify", str(copy), "-n", "1"]):
            rc, err = call(argv, capsys)
            assert rc == 2, (name, argv[0], rc, err)
    assert snapshot(world) == before


def test_cli_corrupt_exports_and_models_are_one_line(world, tmp_path, capsys):
    onnx = tmp_path / "onnx"
    shutil.copytree(world / "onnx", onnx)
    (onnx / "vision_par.onnx").write_bytes((onnx / "vision_par.onnx").read_bytes()[:500])
    rc, _ = call(["build", str(onnx), "--backend", "onnxruntime", "--precision", "fp32", "--out", str(tmp_path / "a")],
                 capsys)
    assert rc == 2 and not (tmp_path / "a").exists()
    (tmp_path / "zero.onnx").write_bytes(b"")
    assert call(["inspect", str(tmp_path / "zero.onnx")], capsys)[0] == 2
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"')
    assert call(["export", "--model", str(model), "--out", str(tmp_path / "m")], capsys)[0] == 2
    assert not (tmp_path / "m").exists()


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if list(folder.glob(pattern)):
            return True
        time.sleep(0.01)
    return False


# where the build is when it is killed: its scratch folder made, the exported graphs written in it,
# the manifest written (verification under way)
STAGES = {"scratch": ".art.tmp-*", "export": ".art.tmp-*/**/vision_par.onnx", "verify": ".art.tmp-*/final/manifest.json"}


# the default run kills the build at its first stage; the later two (about 30 s more) run in the slow set
@pytest.mark.parametrize("stage", [s if s == "scratch" else pytest.param(s, marks=pytest.mark.slow) for s in STAGES])
def test_a_killed_build_leaves_no_half_artifact_and_the_next_run_cleans_up(tmp_path, stage):
    out = tmp_path / "art"
    command = [sys.executable, "-m", "par_export.cli", "build", "--model", "tiny", "--precision", "fp32",
               "--backend", "onnxruntime", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    reached = _wait_for(STAGES[stage], tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached, f"the build never reached the {stage} stage"
    assert not out.exists(), "a killed build must not leave an artifact at --out"
    assert list(tmp_path.glob(".art.tmp-*")), "the kill came mid-write: its scratch folder is still there"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no scratch folder, no lock file left


def test_cli_numbers_nan_order_and_output_places_are_one_line(world, tmp_path, capsys, monkeypatch):
    """Classes of issue 32: NaN/inf/negative tolerances, profile bounds out of order, an empty budget
    list, and output folders that must never be written (/, the home folder, the current folder)."""
    before = snapshot(world)
    art = world / "art"
    for value in ["nan", "inf", "-1e-3", "x"]:
        for flag in ("--atol", "--rtol"):
            assert call(["verify", str(art), flag, value], capsys)[0] == 2, (flag, value)
            assert call(["build", "--model", "tiny", "--out", str(tmp_path / "b"), "--print-trtexec", flag, value],
                        capsys)[0] == 2, (flag, value)
    rc, err = call(["build", "--model", "tiny", "--out", str(tmp_path / "b"), "--min-batch", "4", "--max-batch", "2",
                    "--print-trtexec"], capsys)
    assert rc == 2 and "min <= opt <= max" in err, err
    for budgets in ("", " , ", ",,"):
        rc, err = call(["eval", "--model", "tiny", "--budgets", budgets, "--n", "2", "--out", str(tmp_path / "e")],
                       capsys)
        assert rc == 2 and "--budgets" in err, (budgets, err)
    monkeypatch.chdir(tmp_path)
    for out in ("/", str(Path.home()), "", "."):
        rc, err = call(["reduce", "--budget", "8", "--out", out], capsys)
        assert rc == 2 and "--out" in err, (out, err)
    assert not Path("/kept_tokens.png").exists() and not (Path.home() / "kept_tokens.png").exists()
    assert not (tmp_path / "kept_tokens.png").exists()
    assert snapshot(world) == before


def test_overwrite_never_deletes_a_users_folder_and_heatmap_never_replaces_a_users_file(world, tmp_path, capsys):
    """Only par-export's marker proves a folder is ours: a user's folder with a report.json or a
    manifest.json of its own survives --overwrite of every writer; --heatmap never replaces a file
    that is not a PNG."""
    art, image = world / "art", world / "scene.png"
    for own in ("report.json", "manifest.json", "results.json"):
        mydocs = tmp_path / f"mydocs-{own}"
        mydocs.mkdir()
        (mydocs / "thesis.txt").write_text("three years of work")
        (mydocs / own).write_text("{}")
        for argv in (["export", "--model", "tiny", "--budget", "16"],
                     ["build", str(world / "onnx"), "--precision", "fp32", "--backend", "onnxruntime"],
                     ["triton-repo", str(world / "onnx")]):
            rc, err = call(argv + ["--out", str(mydocs), "--overwrite"], capsys)
            assert rc == 2 and "replaces only a folder par-export wrote" in err, (argv, own, err)
            assert (mydocs / "thesis.txt").read_text() == "three years of work"
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    rc, err = call(["run", str(art), "--image", str(image), "--prompt", "a red square", "--heatmap", str(notes)],
                   capsys)
    assert rc == 2 and "not a PNG" in err and notes.read_text() == "keep me"
    png = tmp_path / "kept.png"
    for _ in range(2):  # a PNG (the previous run's) is replaced
        assert call(["run", str(art), "--image", str(image), "--prompt", "a red square", "--heatmap", str(png)],
                    capsys)[0] == 0


def test_run_refuses_the_prompts_the_server_refuses(world, tmp_path, capsys):
    art, image = world / "art", world / "scene.png"
    for prompt, message in (("", "is empty"), ("   ", "is empty"), ("x" * 100_000, "at most")):
        rc, err = call(["run", str(art), "--image", str(image), "--prompt", prompt,
                        "--heatmap", str(tmp_path / "h.png")], capsys)
        assert rc == 2 and message in err, (prompt[:10], err)


def _reseal(folder: Path, *changed: str) -> None:
    """Write the manifest's hashes of ``changed`` files again: a tampering the seal alone cannot catch."""
    from par_export.artifact.manifest import sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    for name in changed:
        manifest["files"][name] = sha256(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


GARBAGE_TOKENIZERS = ["", "garbage", "{}", "[]", '{"added_tokens": [], "model": 3}',
                      '{"added_tokens": [{}], "model": {"type": "BPE"}}', '{"model": {"type": "BPE"}}']


def test_artifacts_and_exports_missing_or_garbling_what_they_declare_are_refused(world, tmp_path, capsys):
    """Issue 32: an artifact or export folder lacking (or holding an unreadable) graph, processor,
    tokenizer or report that it declares is refused at build and at load, even when resealed; a
    prompt is never silently ignored."""
    before = snapshot(world)
    art, image = world / "art", world / "scene.png"
    uses = [["run", None, "--image", str(image), "--prompt", "red", "--heatmap", str(tmp_path / "h.png")],
            ["verify", None, "-n", "1"]]

    def refused(folder: Path, what: str) -> None:
        for argv in uses:
            rc, err = call([argv[0], str(folder), *argv[2:]], capsys)
            assert rc == 2, (what, argv[0], err)

    for garbage in GARBAGE_TOKENIZERS:
        for name in ("tokenizer/tokenizer.json", "processor/tokenizer.json"):
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(art, copy)
            (copy / name).write_text(garbage)
            _reseal(copy, name)
            refused(copy, f"{name} = {garbage!r}")
    copy = tmp_path / "no-query"
    shutil.copytree(art, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["graphs"].pop("query_encoder")
    for name in (entry["file"], entry["source"]):
        manifest["files"].pop(name)
        (copy / name).unlink()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rc, err = call(["run", str(copy), "--image", str(image), "--prompt", "red"], capsys)
    assert rc == 2 and "declares a query encoder" in err, err

    # build: each file an export declares, missing or unreadable
    for name, edit in (("query_encoder.onnx", "rm"), ("report.json", "rm"), ("processor", "rm"), ("tokenizer", "rm"),
                       ("report.json", "{not json"), ("tokenizer/tokenizer.json", "garbage"),
                       ("processor/processor_config.json", "[1, 2")):
        onnx = tmp_path / "onnx"
        shutil.rmtree(onnx, ignore_errors=True)
        shutil.copytree(world / "onnx", onnx)
        target = onnx / name
        if edit == "rm":
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        else:
            target.write_text(edit)
        out = tmp_path / "built"
        rc, err = call(["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(out)],
                       capsys)
        assert rc == 2 and not out.exists(), (name, edit, err)
        assert not list(tmp_path.glob(".built*")), (name, edit)
    assert snapshot(world) == before


def test_weights_that_do_not_match_the_declared_architecture_are_refused(tiny_folders, tmp_path, capsys):
    """A config.json of one architecture over the weights of another: refused in one line naming
    missing and unexpected keys, instead of loading random weights and exporting them."""
    from par_export.models.tiny import save_tiny_qwen2_5_vl

    llava, _ = tiny_folders
    qwen = save_tiny_qwen2_5_vl(tmp_path / "qwen")
    for weights, config in ((llava, qwen), (qwen, llava)):
        mixed = tmp_path / f"mixed-{weights.name}"
        shutil.copytree(weights, mixed)
        shutil.copy(config / "config.json", mixed / "config.json")
        out = tmp_path / f"out-{weights.name}"
        rc, err = call(["export", "--model", str(mixed), "--out", str(out)], capsys)
        assert rc == 2 and "do not match" in err and ("missing" in err or "mis-shaped" in err), err
        assert not out.exists()


def test_outputs_never_go_inside_an_input_nor_at_root_home_or_here(world, tiny_folders, tmp_path, capsys,
                                                                   monkeypatch):
    """One output-folder rule for every writer: export, build and triton-repo never write into the
    folder they read; plugin build never at /, the home folder or the current folder."""
    llava, _ = tiny_folders
    before, model_before = snapshot(world), snapshot(llava)
    for argv in (["export", "--model", str(llava), "--out", str(llava / "onnx")],
                 ["build", str(world / "onnx"), "--precision", "fp32", "--backend", "onnxruntime",
                  "--out", str(world / "onnx" / "art")],
                 ["triton-repo", str(world / "onnx"), "--out", str(world / "onnx" / "repo")],
                 ["eval", "--model", str(llava), "--n", "2", "--out", str(llava / "eval")]):
        rc, err = call(argv, capsys)
        assert rc == 2 and "inside the input" in err, (argv[0], err)
    monkeypatch.chdir(tmp_path)
    for out in ("/", str(Path.home()), "", "."):
        rc, err = call(["plugin", "build", "--out", out], capsys)
        assert rc == 2 and "--out" in err, (out, err)
    assert not Path("/libpar_plugins.so").exists() and not (tmp_path / "libpar_plugins.so").exists()
    assert snapshot(world) == before and snapshot(llava) == model_before


def test_reads_never_block_and_messages_name_what_was_wrong(world, tmp_path, capsys):
    """No blocking read of a FIFO or device as an image; a mistyped top-level flag is named; two
    endpoints on one port are refused before Triton starts; an undecodable upload's message shows no
    object repr."""
    from par_export.processing import InputError, decode_image

    art = world / "art"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for image in (fifo, Path("/dev/zero"), tmp_path):
        rc, err = call(["run", str(art), "--image", str(image), "--prompt", "red"], capsys)
        assert rc == 2 and "not a regular file" in err, (image, err)
    for argv, flag in ((["--bogus"], "--bogus"), (["-x", "--debug"], "-x"), (["run", str(art), "--bogus"], "--bogus"),
                       (["--bogus", "run", str(art)], "--bogus")):
        rc, err = call(argv, capsys)
        assert rc == 2 and f"unrecognized arguments: {flag}" in err, (argv, err)
    rc, err = call(["serve", str(art), "--http-port", "18000", "--grpc-port", "18000"], capsys)
    assert rc == 2 and "same port" in err, err
    with pytest.raises(InputError) as caught:
        decode_image(b"not an image at all", "request image")
    assert "object at 0x" not in str(caught.value) and "request image" in str(caught.value)


def test_eval_defaults_fit_the_family_and_release_the_artifacts_sessions(world, tiny_folders, tmp_path, capsys):
    """eval's default methods are the ones the family takes (no pool on per-image N); eval through a
    built artifact releases its Polygraphy sessions (no "never deactivated" warning)."""
    from par_export.eval.run import DEFAULT_METHODS, default_methods
    from par_export.models.tiny import save_tiny_llava_next, save_tiny_qwen2_5_vl

    for folder in (save_tiny_qwen2_5_vl(tmp_path / "qwen"), save_tiny_llava_next(tmp_path / "next")):
        methods = default_methods(folder)
        assert "par" in methods and "pool" not in methods, (folder.name, methods)
    assert default_methods(tiny_folders[0]) == list(DEFAULT_METHODS)  # LLaVA-1.5: one N for every image
    rc = main(["eval", "--model", "tiny", "--backend", str(world / "art"), "--n", "4", "--budgets", "16",
               "--out", str(tmp_path / "ev")])
    printed = capsys.readouterr()
    assert rc == 0 and "never deactivated" not in printed.out + printed.err
