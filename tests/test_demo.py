"""The shipped demo VLM (par_export/assets/demo): loads through from_pretrained like a user's
checkpoint, fits the size budget, and answers the procedural VQA well above the answer prior."""

from __future__ import annotations

import json

import pytest

from par_export.cli import main
from par_export.models.demo import DEMO_DIR, demo_paths


def answer_prior_accuracy(n_test: int, n_train: int = 5000) -> float:
    """Accuracy on the first ``n_test`` test samples of answering each question type with its most
    frequent training answer (0.326 on 2000 test samples): what ignoring the image gets."""
    from collections import Counter, defaultdict

    from par_export.data.vqa import sample, split_seeds

    counts = defaultdict(Counter)
    for seed in split_seeds("train", n_train):
        s = sample(seed)
        counts[s.kind][s.answer] += 1
    test = [sample(seed) for seed in split_seeds("test", n_test)]
    return sum(counts[s.kind].most_common(1)[0][0] == s.answer for s in test) / n_test


def test_demo_weights_are_safetensors_within_25_mb():
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".safetensors", ".json"}
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl")]  # nothing to unpickle
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20


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
    samples, encoded, _ = vqa_batch(reference, inputs, list(split_seeds("test", 4)))
    ids, mask, pixels = encoded["input_ids"], encoded["attention_mask"], encoded["pixel_values"]
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


def test_demo_qwen_without_its_weights_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """demo-qwen is not shipped yet (docs/demo.md): the name says where its weights come from, in one line."""
    import par_export.models.demo as demo

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "assets")  # a package without the weights
    assert main(["eval", "--model", "demo-qwen", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train them with tools/train_demo_qwen.py" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
