"""The shipped demo VLMs (par_export/assets/demo: ``demo``, LLaVA layout, and ``demo-qwen``,
Qwen2.5-VL): load through from_pretrained like a user's checkpoint, fit the size budget, and
answer the procedural VQA well above the answer prior."""

from __future__ import annotations

import json

import pytest

from par_export.cli import main
from par_export.models.demo import DEMO_DIR, demo_paths, demo_qwen_path


def answer_prior_accuracy(n_test: int, n_train: int = 5000, sizes: bool = False) -> float:
    """Accuracy on the first ``n_test`` test samples of answering each question type with its most
    frequent training answer (0.326 on 2000 test samples): what ignoring the image gets.
    ``sizes``: the scenes demo-qwen sees (several sizes)."""
    from collections import Counter, defaultdict

    from par_export.data.vqa import sample, split_seeds

    counts = defaultdict(Counter)
    for seed in split_seeds("train", n_train):
        s = sample(seed, sizes=sizes)
        counts[s.kind][s.answer] += 1
    test = [sample(seed, sizes=sizes) for seed in split_seeds("test", n_test)]
    return sum(counts[s.kind].most_common(1)[0][0] == s.answer for s in test) / n_test


def test_demo_weights_are_safetensors_within_40_mb():
    """Both demos together: safetensors and JSON only (nothing to unpickle), 40 MB at most."""
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".safetensors", ".json"}
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl")]  # nothing to unpickle
    assert {p.parent.name for p in files if p.name == "model.safetensors"} == {"llava", "clip", "qwen"}
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20


def test_demo_qwen_loads_like_a_user_checkpoint():
    """demo-qwen: a Qwen2.5-VL folder with its own processor (dynamic resolution) and chat
    template; the scenes' sizes give different grids of about 256 merged tokens."""
    from par_export.data.vqa import SCENE_SIZES, render, sample
    from par_export.models.families import family_for

    folder = demo_qwen_path()
    family = family_for(folder)
    assert family.name == "qwen2_5_vl"
    inputs = family.inputs(folder)
    grids = set()
    for seed in range(40):
        s = sample(seed, sizes=True)
        encoded = inputs.encode([s.question], [render(s)])
        t, h, w = encoded["image_grid_thw"][0].tolist()
        assert (w * 4, h * 4) == s.size  # the processor keeps each scene size as drawn (4-pixel patches)
        grids.add((h // 2, w // 2))
    assert len(grids) == len(SCENE_SIZES) and all(200 <= h * w <= 270 for h, w in grids)
    assert "<|im_start|>assistant" in inputs.chat_prompt("what shape is the red object ?")


@pytest.mark.slow  # loads the demo model
def test_demo_loads_like_a_user_checkpoint():
    from transformers import AutoTokenizer, CLIPModel, LlavaForConditionalGeneration

    from par_export.models.loading import pretrained_kwargs

    llava_dir, clip_dir = demo_paths()
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, **pretrained_kwargs())
    clip = CLIPModel.from_pretrained(clip_dir, **pretrained_kwargs())
    tokenizer = AutoTokenizer.from_pretrained(llava_dir, **pretrained_kwargs())
    assert model.config.image_seq_length == 256 and tokenizer.convert_tokens_to_ids("<image>") == \
        model.config.image_token_id
    tower, clip_tower = model.model.vision_tower.state_dict(), clip.vision_model.state_dict()
    assert all((tower[k] == clip_tower[k]).all() for k in tower if "post_layernorm" not in k)  # one tower


@pytest.mark.slow  # loads the demo model
def test_demo_answers_above_the_answer_prior(tmp_path):
    """The shipped weights read the image (docs/demo.md): on 150 test samples the full model and
    PAR at 64 of 256 tokens beat answering from the question alone by a wide margin (0.93 and 0.93
    against 0.37 when measured); an untrained or image-blind model stays at or below it."""
    assert main(["eval", "--model", "demo", "--methods", "par", "--budgets", "64", "--split", "test",
                 "--n", "150", "--batch", "50", "--out", str(tmp_path / "o")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "o" / "results.json").read_text())}
    prior = answer_prior_accuracy(150)
    assert rows["full"]["accuracy"] >= prior + 0.3, (rows["full"], prior)
    assert rows["par"]["accuracy"] >= prior + 0.3 and rows["par"]["mean_kept"] == 64, (rows["par"], prior)


@pytest.mark.slow  # loads the demo model
def test_demo_pipeline_and_onnxruntime_genai_answer_like_the_reference(tmp_path):
    """Issue 8 on the shipped model: built artifact + transformers == ReducedLlava, and the LLM on
    onnxruntime-genai == transformers, for a batch with a different K per image."""
    from par_export.data.vqa import split_seeds
    from par_export.engine.build import BuildOptions, build
    from par_export.eval.vqa import vqa_batch
    from par_export.export import export_model
    from par_export.models.llava import FAMILY, ReducedLlava
    from par_export.reduce import PARConfig
    from par_export.runtime import VisionLanguagePipeline
    from par_export.runtime.llm_genai import GenaiLLM, export_genai

    llava_dir, clip_dir = demo_paths()
    config = PARConfig()
    export_model(llava_dir, tmp_path / "onnx", budget="auto", config=config, clip_path=clip_dir, progress=False)
    build(tmp_path / "onnx", tmp_path / "art", BuildOptions(precision="fp32", backend="onnxruntime"), progress=False)
    reference = ReducedLlava.from_pretrained(llava_dir, "par", config, clip_path=clip_dir)
    inputs = FAMILY.inputs(llava_dir)
    samples, ids, mask, pixels, _ = vqa_batch(reference, inputs, list(split_seeds("test", 4)))
    prompts = [f"USER : <image> {s.question} ASSISTANT :" for s in samples]

    pipe = VisionLanguagePipeline(tmp_path / "art", reference.model, reference.tokenizer)
    texts, info = pipe.generate(pixels.numpy(), prompts, max_new_tokens=3)
    assert len(set(info["num_kept"])) > 1, info

    tok = reference.tokenizer
    new = reference.generate(ids, mask, pixels, prompts=prompts, budget="auto", max_new_tokens=3,
                             do_sample=False, pad_token_id=0)
    assert texts == tok.batch_decode(new, skip_special_tokens=True)

    export_genai(reference.model, tok, tmp_path / "genai")
    genai_pipe = VisionLanguagePipeline(tmp_path / "art", reference.model, tok, llm=GenaiLLM(tmp_path / "genai"))
    assert genai_pipe.generate(pixels.numpy(), prompts, max_new_tokens=3)[0] == texts


@pytest.mark.slow  # loads the demo model and evaluates 400 questions
def test_demo_qwen_answers_and_its_positions_matter(tmp_path):
    """demo-qwen reads the image (well above the answer prior with all tokens and with PAR at 16
    tokens), and its kept tokens' M-RoPE positions matter: the same kept tokens at consecutive
    positions (par:positions=sequential) answer the position questions (colour at a region,
    which side) measurably worse (docs/demo.md: 0.xx against 0.xx)."""
    assert main(["eval", "--model", "demo-qwen", "--methods", "par,par:positions=sequential", "--budgets", "16",
                 "--split", "test", "--n", "400", "--batch", "50", "--out", str(tmp_path / "o")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "o" / "results.json").read_text())}
    prior = answer_prior_accuracy(400, sizes=True)
    assert rows["full"]["accuracy"] >= prior + 0.3, (rows["full"], prior)
    assert rows["par"]["accuracy"] >= prior + 0.3 and rows["par"]["mean_kept"] == 16, (rows["par"], prior)
    ablated = rows["par:positions=sequential"]
    for kind in ("color", "side"):
        assert ablated[f"accuracy_{kind}"] <= rows["par"][f"accuracy_{kind}"] - 0.1, (kind, ablated, rows["par"])


@pytest.mark.slow  # builds demo-qwen
def test_demo_qwen_runs_wherever_demo_runs(tmp_path, capsys):
    """``--model demo-qwen`` through main: build (export + build + verify), run, chat with the ONNX
    Runtime LLM beside the full context, emit for Edge-LLM, eval through the built artifact."""
    from par_export.data.vqa import render, sample

    s = sample(2_000_001, sizes=True)
    render(s).save(tmp_path / "scene.png")
    art = tmp_path / "art"
    assert main(["build", "--model", "demo-qwen", "--precision", "fp32", "--budget", "16", "--out", str(art)]) == 0
    assert "verify (fp32): PASSED" in capsys.readouterr().out
    scene = ["--image", str(tmp_path / "scene.png"), "--prompt", s.question]
    assert main(["run", str(art), *scene, "--budget", "16"]) == 0
    assert "kept 16/" in capsys.readouterr().out
    assert main(["chat", "--model", "demo-qwen", "--artifact", str(art), *scene, "--budget", "16", "--llm",
                 "onnxruntime", "--compare-full", "--repeat", "1", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "LLM, both rows: ONNX Runtime" in out and "full-context answer: " in out
    assert main(["emit", str(art), "--model", "demo-qwen", *scene, "--runtime", "edge-llm", "--budget", "16",
                 "--out", str(tmp_path / "emit")]) == 0
    assert main(["eval", "--model", "demo-qwen", "--backend", str(art), "--budgets", "16", "--n", "20",
                 "--out", str(tmp_path / "eval")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "eval" / "results.json").read_text())}
    assert rows["par"]["mean_kept"] == 16 and rows["full"]["n"] == 20


def test_demo_qwen_without_its_weights_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """demo-qwen is not shipped yet: the name says where its weights come from, in one line."""
    import par_export.models.demo as demo

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "assets")  # a package without the weights
    assert main(["eval", "--model", "demo-qwen", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train them with tools/train_demo_qwen.py" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
