"""par-export eval writes every output and refuses bad arguments (tiny random-weight model:
this checks the plumbing; accuracy needs the trained demo model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from par_export.cli import main
from par_export.data.vqa import render, sample


def test_eval_writes_all_outputs(tiny_folders, tmp_path, capsys):
    llava, clip = tiny_folders
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par,pool,cls_attn",
                 "--budgets", "16,auto", "--n", "12", "--batch", "6", "--out", str(tmp_path / "o")]) == 0
    for name in ("results.csv", "results.json", "accuracy_vs_tokens.png", "kept_heatmaps.png"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {r["method"] for r in rows} == {"full", "par", "pool", "cls_attn"}
    assert {(r["method"], r["budget"]) for r in rows if r["method"] != "full"} == {
        ("par", 16), ("par", "auto"), ("pool", 16), ("cls_attn", 16)}  # no auto for pool/cls_attn
    assert all(r["n"] == 12 for r in rows)
    par16 = next(r for r in rows if (r["method"], r["budget"]) == ("par", 16))
    assert par16["mean_kept"] == 16 and 0 < par16["flops_relative"] < 1
    assert all(r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] for r in rows)
    header = (tmp_path / "o" / "results.csv").read_text().splitlines()[0]
    assert "accuracy_low" in header and "accuracy_high" in header
    assert "mean K" in capsys.readouterr().out
    # an existing results folder is refused before the evaluation runs, replaced with --overwrite
    again = ["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par", "--budgets", "16", "--n", "2",
             "--batch", "2", "--out", str(tmp_path / "o")]
    assert main(again) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main(again + ["--overwrite"]) == 0
    assert {r["method"] for r in json.loads((tmp_path / "o" / "results.json").read_text())} == {"full", "par"}


def test_eval_jsonl_end_to_end(tiny_folders, tmp_path, capsys):
    llava, clip = tiny_folders
    lines = []
    for i in range(3):
        s = sample(2_000_000 + i)
        render(s).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"question_id": i, "image": f"{i}.png", "text": s.question, "answer": s.answer}))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tiny.png")
    lines.append(json.dumps({"question_id": 9, "image": "missing.png", "text": "?", "answer": "yes"}))
    (tmp_path / "eval.jsonl").write_text("\n".join(lines))
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--data", str(tmp_path / "eval.jsonl"),
                 "--images", str(tmp_path), "--methods", "par", "--budgets", "8", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "4 records; skipped: {'missing image': 1}" in out
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["n"] for r in rows] == [3, 3]

    # --par reaches the JSONL path (it was ignored): a lower alpha keeps more tokens
    common = ["eval", "--model", str(llava), "--clip", str(clip), "--data", str(tmp_path / "eval.jsonl"), "--images",
              str(tmp_path), "--methods", "par", "--budgets", "auto"]
    assert main(common + ["--out", str(tmp_path / "a0")]) == 0
    assert main(common + ["--par", "alpha=0.0", "--out", str(tmp_path / "a1")]) == 0
    kept = {name: next(r["mean_kept"] for r in json.loads((tmp_path / name / "results.json").read_text())
                       if r["method"] == "par") for name in ("a0", "a1")}
    assert kept["a1"] > kept["a0"], kept
    # --backend means the same on JSONL as on the procedural split: the built graphs reduce, same answers
    from par_export.eval.vqa import evaluate_jsonl

    answers = {}
    for backend in ("torch", "onnxruntime"):
        artifacts = None
        if backend == "onnxruntime":
            from par_export.eval.vqa import build_eval_artifacts

            artifacts = build_eval_artifacts(llava, clip, ["par"], [8], tmp_path / "built")
        tallies = evaluate_jsonl(llava, clip, tmp_path / "eval.jsonl", tmp_path, ["par"], [8], artifacts=artifacts,
                                 progress=False)["tallies"]
        answers[backend] = tallies[("par", 8)].predictions
    assert answers["onnxruntime"] == answers["torch"] and len(answers["torch"]) == 3 and any(answers["torch"])
    fixed = common[:-1] + ["8,auto"]
    assert main(fixed + ["--out", str(tmp_path / "t")]) == 0
    assert main(fixed + ["--backend", "onnxruntime", "--out", str(tmp_path / "b")]) == 0
    torch_rows, ort_rows = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("t", "b"))
    assert [(r["method"], r["budget"], r["n"]) for r in ort_rows] == [(r["method"], r["budget"], r["n"])
                                                                      for r in torch_rows]
    for ours, reference in zip(ort_rows, torch_rows):
        assert ours["accuracy"] == reference["accuracy"], ours
        assert abs(ours["mean_kept"] - reference["mean_kept"]) <= (0.5 if ours["budget"] == "auto" else 0), ours


def test_eval_rejects_unknown_method_and_budget(tiny_folders, capsys):
    llava, _ = tiny_folders
    assert main(["eval", "--model", str(llava), "--methods", "par,magic", "--n", "2"]) == 2
    assert "unknown reduction method 'magic'" in capsys.readouterr().err
    assert main(["eval", "--model", str(llava), "--budgets", "16,lots", "--n", "2"]) == 2
    assert "--budgets" in capsys.readouterr().err


def test_eval_onnxruntime_backend_matches_torch(tiny_folders, tmp_path):
    llava, clip = tiny_folders
    common = ["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par,pool", "--budgets", "16,auto",
              "--n", "8", "--batch", "4"]
    assert main(common + ["--out", str(tmp_path / "torch")]) == 0
    assert main(common + ["--backend", "onnxruntime", "--out", str(tmp_path / "ort")]) == 0
    torch_rows, ort_rows = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("torch", "ort"))
    assert [(r["method"], r["budget"]) for r in ort_rows] == [(r["method"], r["budget"]) for r in torch_rows]
    for ours, reference in zip(ort_rows, torch_rows):
        assert ours["accuracy"] == reference["accuracy"], ours
        # auto counts relevance scores above a threshold: 1e-6 differences may move a token across it
        assert abs(ours["mean_kept"] - reference["mean_kept"]) <= (0.5 if ours["budget"] == "auto" else 0), ours


def test_eval_refuses_an_unknown_backend(tiny_folders, tmp_path, capsys):
    llava, clip = tiny_folders
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--backend", "tensorrtt", "--n", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "expected torch, onnxruntime or a `par-export build` folder" in capsys.readouterr().err


def test_bootstrap_intervals_are_paired_and_shrink_with_n():
    from par_export.eval.vqa import Tally, accuracy_interval, bootstrap_indices

    rng = np.random.default_rng(0)
    right = rng.random(400) < 0.7
    a, b = Tally(), Tally()
    a.add(right, right.tolist())
    b.add(right, right.tolist())
    indices = bootstrap_indices(400)
    assert accuracy_interval(a, indices) == accuracy_interval(b, indices)  # same questions resampled alike
    low, high = accuracy_interval(a, indices)
    assert low < a.accuracy < high and 0.06 < high - low < 0.12  # ~ 2 x 1.96 x sqrt(0.21 / 400) = 0.09
    small = Tally()
    small.add(right[:100], right[:100].tolist())
    s_low, s_high = accuracy_interval(small, bootstrap_indices(100))
    assert s_high - s_low > high - low
    perfect = Tally()
    perfect.add([True] * 400, [1] * 400)
    assert accuracy_interval(perfect, indices) == (1.0, 1.0)
    with pytest.raises(ValueError, match="100 outcomes for resamples of 400"):
        accuracy_interval(small, indices)


def test_agreement_with_full_and_accuracy_per_question_type():
    """'agree' counts the answers equal to the full model's, right or wrong; per-type accuracy splits
    the same outcomes by question type."""
    from par_export.eval.vqa import Tally

    full, reduced = Tally(), Tally()
    full.add([True, True, False, False], ["red", "2", "left", "star"], ["color", "count", "side", "shape"])
    reduced.add([True, False, False, False], ["red", "3", "left", "circle"], ["color", "count", "side", "shape"])
    assert reduced.agreement(full) == 0.5 and full.agreement(full) == 1.0  # "left": wrong both, yet agreeing
    assert full.accuracy_by_kind() == {"color": 1.0, "count": 1.0, "shape": 0.0, "side": 0.0}
    assert reduced.accuracy_by_kind()["count"] == 0.0


def test_ablations_run_beside_the_methods_on_the_same_questions(tiny_folders, tmp_path, capsys):
    from par_export.eval.vqa import _adapters
    from par_export.reduce import PARConfig

    llava, clip = tiny_folders
    methods = ["par", "par:router=keep", "par:beta=1.0:tau=0.25"]
    _, adapters, _ = _adapters(llava, clip, methods, PARConfig())
    configs = {m: adapters[m].reducer.config for m in methods}
    assert (configs["par"].router, configs["par:router=keep"].router) == ("merge", "keep")
    assert (configs["par:beta=1.0:tau=0.25"].beta, configs["par:beta=1.0:tau=0.25"].tau) == (1.0, 0.25)
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--methods", ",".join(methods[:2]),
                 "--budgets", "8", "--n", "6", "--batch", "6", "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["full", "par", "par:router=keep"] and all(r["n"] == 6 for r in rows)
    # the same entry through built graphs: its override reaches the export
    from par_export.artifact import read_manifest
    from par_export.eval.vqa import build_eval_artifacts

    built = build_eval_artifacts(llava, clip, ["par:router=keep"], [8], tmp_path / "built")
    assert read_manifest(built[("par:router=keep", 8)]).metadata.config["router"] == "keep"
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par:router=keep", "--budgets", "8",
                 "--n", "6", "--batch", "6", "--backend", "onnxruntime", "--out", str(tmp_path / "ort")]) == 0
    ort = json.loads((tmp_path / "ort" / "results.json").read_text())
    assert [(r["method"], r["accuracy"]) for r in ort] == [(r["method"], r["accuracy"]) for r in rows if r["method"]
                                                          in ("full", "par:router=keep")]
    capsys.readouterr()
    assert main(["eval", "--model", str(llava), "--methods", "par:nope=1", "--n", "2"]) == 2
    assert "unknown PARConfig option 'nope'" in capsys.readouterr().err
