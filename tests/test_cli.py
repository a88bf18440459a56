"""The par-export command line, through its entry point and as a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from par_export.cli import main
from par_export.reduce import available_methods

ROOT = Path(__file__).resolve().parents[1]


def test_methods_lists_every_registered_reducer(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name} " in out


def test_flops_prints_the_table_for_all_budgets_and_text_lengths(capsys):
    assert main(["flops", "--model-config", "llava-1.5-7b", "--budget", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "|" in line and not line.strip().startswith("K")]
    assert {(r[0], r[1]) for r in rows} == {
        (k, t) for k in ("576", "192", "128", "64", "auto~64") for t in ("16", "64", "256")
    }
    assert len(rows) == 15
    assert "83%" in out


def test_reduce_writes_png_and_reports_kept_tokens(tmp_path, capsys):
    assert main(["reduce", "--budget", "32", "--batch", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("kept 32/576 tokens") == 2
    png = tmp_path / "kept_tokens.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_budget_is_a_clear_error(capsys):
    assert main(["reduce", "--method", "pool", "--budget", "auto"]) == 2
    assert "has no adaptive budget" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "par_export.cli", "methods"], capture_output=True, text=True)
    assert result.returncode == 0 and "visionzip_mean" in result.stdout


# --- wrong results are no longer returned as success (issue 19) -------------------------------


def one_error(capsys, rc: int, fragment: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    # (transformers' own "Loading weights" bars may precede it)
    assert fragment in err and len([line for line in err.splitlines() if "error:" in line]) == 1, err


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-art")
    assert main(["build", "--model", "tiny", "--precision", "fp32", "--backend", "onnxruntime", "--budget", "16",
                 "--out", str(root / "art")]) == 0
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(root / "img.png")
    return root / "art", root / "img.png"


EMIT = ["--prompt", "USER: <image>\nwhat? ASSISTANT:", "--runtime", "edge-llm"]


@pytest.mark.slow  # loads the demo model (the other model)
def test_emit_with_another_model_is_refused(tiny_artifact, tmp_path, capsys):
    art, image = tiny_artifact
    one_error(capsys, main(["emit", str(art), "--image", str(image), *EMIT, "--model", "demo", "--out",
                            str(tmp_path / "a")]), "pass the model it was exported from")
    assert not (tmp_path / "a").exists()


def test_emit_with_an_out_of_range_budget_is_refused(tiny_artifact, tmp_path, capsys):
    art, image = tiny_artifact
    one_error(capsys, main(["emit", str(art), "--image", str(image), *EMIT, "--model", "tiny", "--budget", "100000",
                            "--out", str(tmp_path / "b")]), "budget must be in [1, 64]")
    assert not (tmp_path / "b").exists()


def test_eval_refuses_budgets_above_n_and_an_empty_jsonl(tiny_folders, tmp_path, capsys):
    llava, clip = tiny_folders
    common = ["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par", "--n", "2", "--batch", "2"]
    one_error(capsys, main(common + ["--budgets", "100000", "--out", str(tmp_path / "a")]),
              "above the 64 tokens of an image")
    (tmp_path / "empty.jsonl").write_text("\n")
    one_error(capsys, main(common + ["--budgets", "8", "--data", str(tmp_path / "empty.jsonl"), "--images",
                                     str(tmp_path), "--out", str(tmp_path / "b")]), "no record to score")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_files_that_are_not_what_they_claim_are_refused(tiny_artifact, tmp_path, capsys):
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    import onnx as onnx_lib

    graph = onnx_lib.load(str(tiny_artifact[0] / "onnx" / "vision_par.onnx"))
    del graph.metadata_props[:]
    onnx_lib.save(graph, str(onnx / "vision_par.onnx"))
    onnx_lib.save(onnx_lib.load(str(tiny_artifact[0] / "onnx" / "query_encoder.onnx")), str(onnx / "query_encoder.onnx"))
    one_error(capsys, main(["triton-repo", str(onnx), "--out", str(tmp_path / "repo")]), "no par.* metadata")
    (tmp_path / "zero.onnx").write_bytes(b"")
    one_error(capsys, main(["inspect", str(tmp_path / "zero.onnx")]), "not an ONNX model")
    one_error(capsys, main(["plugin", "build", "--trt-include", str(tmp_path / "nonexistent"), "--out",
                            str(tmp_path / "plugin")]), "no NvInfer.h there")
    with pytest.raises(SystemExit) as exit_:  # argparse: one line, exit 2
        main(["export", "--model", "tiny", "--k-max", "0", "--out", str(tmp_path / "e")])
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import par_export.cli as cli
    import par_export.cli.reducers

    def broken(args):
        return {}["missing"]  # a bug, not bad input

    monkeypatch.setattr(par_export.cli.reducers, "cmd_methods", broken)
    assert cli.main(["methods"]) == 3
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "methods"])


def test_build_refuses_an_out_that_another_process_is_writing_then_builds_once_it_is_free(tmp_path, capsys):
    """A second writer fails at once instead of racing the first. The first writer is a real process
    holding the same ``output_lock`` a build holds (two real builds would race on import time)."""
    out = tmp_path / "art"
    ready = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from par_export.files import output_lock\n"
         "with output_lock(pathlib.Path(sys.argv[1]), ValueError):\n"
         "    pathlib.Path(sys.argv[2]).touch()\n"
         "    sys.stdin.read()\n",
         str(out), str(ready)],
        stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), "the lock holder did not start"
        command = ["build", "--model", "tiny", "--precision", "fp32", "--backend", "onnxruntime", "--out", str(out)]
        assert main(command) == 2
        assert "another par-export process is writing it" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.communicate(b"")
    assert holder.returncode == 0
    assert main(command) == 0
    assert json.loads((out / "manifest.json").read_text())["verification"]["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "locked"]


# --- flags as TensorRT / Polygraphy / Hugging Face users spell them (issue 20) ---------------
def _subparsers():
    import argparse

    from par_export.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_argument_has_help_and_choices_are_listed():
    parser, commands = _subparsers()
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in commands.items() for a in p._actions
               if not a.help and a.dest != "help"]
    assert not missing, missing
    for name in ("export", "reduce", "chat"):
        method = next(a for a in commands[name]._actions if a.dest == "method")
        assert "par" in method.choices and "visionzip_mean" in method.choices
    target = next(a for a in commands["build"]._actions if a.dest == "target")
    assert "jetson-orin-nano" in target.choices


def test_precision_flags_alias_precision_and_pool_limit_aliases_workspace():
    parser, _ = _subparsers()
    assert parser.parse_args(["build", "x", "--int8"]).precision == "int8"
    assert parser.parse_args(["build", "x", "--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args(["build", "x"]).precision == "fp16"
    assert parser.parse_args(["build", "x", "--pool-limit", "workspace:2G"]).workspace == 2048
    assert parser.parse_args(["build", "x", "--save-timing-cache", "t.cache"]).timing_cache == "t.cache"
    assert parser.parse_args(["build", "x", "--useDLACore", "1"]).dla_core == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "x", "--int8", "--fp16"])  # one precision


def test_build_and_verify_take_atol_rtol(tiny_artifact, capsys):
    art, _ = tiny_artifact
    assert main(["verify", str(art), "-n", "1", "--atol", "0", "--rtol", "0"]) == 1  # nothing is exact
    assert "FAILED" in capsys.readouterr().out
    assert main(["verify", str(art), "-n", "1"]) == 0  # and the recorded verdict is right again
    assert json.loads((art / "manifest.json").read_text())["verification"]["passed"] is True


def test_device_without_its_provider_is_one_line(tiny_artifact, capsys):
    art, image = tiny_artifact
    rc = main(["run", str(art), "--image", str(image), "--prompt", "red", "--device", "cuda",
               "--heatmap", str(art.parent / "h.png")])
    one_error(capsys, rc, "CUDAExecutionProvider is not available here")


def test_quiet_silences_info_messages(tmp_path, capsys):
    assert main(["-q", "build", "--model", "tiny", "--backend", "auto", "--precision", "fp32",
                 "--out", str(tmp_path / "a")]) == 0
    assert "TensorRT not found" not in capsys.readouterr().err
    assert main(["build", "--model", "tiny", "--backend", "auto", "--precision", "fp32",
                 "--out", str(tmp_path / "b")]) == 0
    assert "TensorRT not found" in capsys.readouterr().err


# one bad input per subcommand, through main(): exit 2 and one error line (the successes are in the
# test modules of each command)
BAD_INPUTS = {
    "methods": (["methods", "--bogus"], "unrecognized arguments"),
    "flops": (["flops", "--budget", "1000"], "above the 576 visual tokens"),
    "reduce": (["reduce", "--method", "nope"], "invalid choice"),
    "export": (["export", "--model", "/nonexistent", "--out", "{tmp}/e"], "not a folder"),
    "build": (["build", "{tmp}/missing", "--out", "{tmp}/b"], "missing"),
    "verify": (["verify", "{tmp}"], "no manifest.json"),
    "run": (["run", "{tmp}", "--image", "x.png", "--prompt", "p"], "no manifest.json"),
    "eval": (["eval", "--data", "{tmp}/x.jsonl"], "--data FILE.jsonl and --images DIR go together"),
    "chat": (["chat", "--image", "{tmp}/none.png", "--prompt", "p"], "none.png"),
    "emit": (["emit", "{tmp}", "--image", "x", "--prompt", "p", "--runtime", "edge-llm", "--out", "{tmp}/o"],
             "no such image"),
    "triton-repo": (["triton-repo", "{tmp}", "--out", "{tmp}/r"], "missing"),
    "serve": (["serve", "{tmp}", "--http-port", "0"], "must be in [1, 65535], got 0"),
    "plugin": (["plugin", "rebuild"], "invalid choice"),
    "inspect": (["inspect", "{tmp}/none.onnx"], "no such ONNX file"),
}


def test_bad_inputs_cover_every_subcommand():
    _, commands = _subparsers()
    assert set(BAD_INPUTS) == set(commands)


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_each_subcommand_refuses_bad_input_with_one_line(command, tmp_path, capsys):
    argv, fragment = BAD_INPUTS[command]
    try:
        rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    one_error(capsys, rc, fragment)


def test_one_budget_rule_for_run_and_chat(tiny_artifact, tmp_path, capsys):
    """'auto' only where the artifact is adaptive; an int K only where it takes a budget input."""
    art, image = tiny_artifact  # built with --budget 16: a budget input
    heat = ["--heatmap", str(tmp_path / "h.png")]
    one_error(capsys, main(["run", str(art), "--image", str(image), "--prompt", "red", "--budget", "auto", *heat]),
              "this artifact keeps a fixed K")
    assert main(["run", str(art), "--image", str(image), "--prompt", "red", "--budget", "8", *heat]) == 0
    assert "kept 8/64" in capsys.readouterr().out
    one_error(capsys, main(["chat", "--artifact", str(art), "--image", str(image), "--prompt", "red",
                            "--budget", "auto", "--max-new-tokens", "1"]), "this artifact keeps a fixed K")

    auto = tmp_path / "auto"  # build's default: PAR's adaptive K
    assert main(["build", "--model", "tiny", "--precision", "fp32", "--backend", "onnxruntime", "--out", str(auto)]) == 0
    assert json.loads((auto / "manifest.json").read_text())["metadata"]["budget"] == "auto"
    capsys.readouterr()
    for given in ([], ["--budget", "auto"]):
        assert main(["run", str(auto), "--image", str(image), "--prompt", "red", *given, *heat]) == 0
        assert re.search(r"kept \d+/64 tokens", capsys.readouterr().out)
    one_error(capsys, main(["run", str(auto), "--image", str(image), "--prompt", "red", "--budget", "8", *heat]),
              "chooses K itself")


def test_par_overrides_reach_every_graph_and_are_refused_where_baked(tiny_artifact, tmp_path, capsys):
    """--par in export, build (--model), run and chat: recorded in the graph's metadata; an artifact
    takes only the prompt-rewrite options, the rest were traced into its graph."""
    from par_export.export.metadata import read_metadata

    art, image = tiny_artifact
    assert json.loads((art / "manifest.json").read_text())["metadata"]["config"]["alpha"] == 1.0  # tuned default
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "onnx"), "--budget", "auto",
                 "--par", "alpha=2.0", "--par", "tau=0.25"]) == 0
    config = read_metadata(tmp_path / "onnx" / "vision_par.onnx")["config"]
    assert (config["alpha"], config["tau"]) == (2.0, 0.25)
    assert main(["build", "--model", "tiny", "--fp32", "--backend", "onnxruntime", "--out", str(tmp_path / "b"),
                 "--par", "beta=0.5"]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["metadata"]["config"]["beta"] == 0.5
    one_error(capsys, main(["build", str(tmp_path / "onnx"), "--fp32", "--out", str(tmp_path / "c"),
                            "--par", "beta=0.5"]), "was exported already")
    assert not (tmp_path / "c").exists()

    heat = ["--heatmap", str(tmp_path / "h.png")]
    capsys.readouterr()
    assert main(["run", str(art), "--image", str(image), "--prompt", "what is red ?", "--par",
                 "template=a picture of {rest}", *heat]) == 0
    assert "query: 'a picture of " in capsys.readouterr().out
    one_error(capsys, main(["run", str(art), "--image", str(image), "--prompt", "red", "--par", "alpha=3", *heat]),
              "--par alpha: fixed in this artifact's graph")
    one_error(capsys, main(["run", str(art), "--image", str(image), "--prompt", "red", "--par", "nope=1", *heat]),
              "unknown PARConfig option 'nope'")
    one_error(capsys, main(["chat", "--artifact", str(art), "--image", str(image), "--prompt", "red",
                            "--max-new-tokens", "1", "--par", "k_max=32"]), "--par k_max: fixed in this artifact's graph")


def test_build_budget_flag_chooses_the_graphs_budget_and_defaults_to_auto(tmp_path, capsys):
    """`build --budget K` exports a budget input with K; the default is PAR's adaptive K, which also
    builds a model whose N is below the old fixed default (a tiny LLaVA-NeXT: 16 tokens per crop)."""
    from par_export.models.tiny import save_tiny_llava_next

    art = tmp_path / "k8"
    assert main(["build", "--model", "tiny", "--fp32", "--backend", "onnxruntime", "--budget", "8",
                 "--out", str(art)]) == 0
    metadata = json.loads((art / "manifest.json").read_text())["metadata"]
    assert metadata["budget"] == 8 and metadata["budget_input"] is True
    assert main(["export", "--model", "tiny", "--budget", "16", "--out", str(tmp_path / "onnx")]) == 0
    one_error(capsys, main(["build", str(tmp_path / "onnx"), "--budget", "8", "--out", str(tmp_path / "x")]),
              "was exported already")
    one_error(capsys, main(["build", "--model", "tiny", "--budget", "8", "--budget-range", "4:8:16",
                            "--out", str(tmp_path / "x")]), "give one")
    assert not (tmp_path / "x").exists()
    nxt = save_tiny_llava_next(tmp_path / "next")
    assert main(["build", "--model", str(nxt), "--fp32", "--backend", "onnxruntime", "--out", str(tmp_path / "n")]) == 0
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["metadata"]["budget"] == "auto"
