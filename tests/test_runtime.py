"""VisionLanguagePipeline on a built artifact answers like ReducedLlava on the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from par_export.engine.build import BuildOptions, build
from par_export.export import export_model
from par_export.models.llava import ReducedLlava, left_pad
from par_export.reduce import PARConfig
from par_export.runtime import PromptError, VisionLanguagePipeline

PROMPTS = ["USER : <image> what color is the circle ? ASSISTANT :",
           "USER : <image> is there a red square on the left ? ASSISTANT :",
           "USER : <image> how many star are there ? ASSISTANT :"]


@pytest.fixture(scope="module")
def setup(tiny_folders, tmp_path_factory):
    llava_dir, clip_dir = tiny_folders
    root = tmp_path_factory.mktemp("runtime")
    # alpha 0: on this random 64-token model the tuned alpha (1.0) keeps k_min for every image, and the
    # tests need a different K per image
    config = PARConfig(alpha=0.0)
    export_model(llava_dir, root / "onnx", budget="auto", config=config, clip_path=clip_dir, progress=False)
    build(root / "onnx", root / "art", BuildOptions(precision="fp32", backend="onnxruntime"), progress=False)
    reference = ReducedLlava.from_pretrained(llava_dir, "par", config, clip_path=clip_dir)
    pipe = VisionLanguagePipeline(root / "art", reference.model, reference.tokenizer)
    return pipe, reference


def reference_answers(reference: ReducedLlava, pixels: torch.Tensor, prompts: list[str]):
    tok, n, image_id = reference.tokenizer, reference.tokens_per_image, reference.model.config.image_token_id
    rows = []
    for prompt in prompts:
        before, after = prompt.split("<image>")
        rows.append(tok(before)["input_ids"] + [image_id] * n + tok(after, add_special_tokens=False)["input_ids"])
    ids, mask = left_pad(rows, 0)
    new = reference.generate(ids, mask, pixels, prompts=prompts, budget="auto", max_new_tokens=5, min_new_tokens=5,
                             do_sample=False, pad_token_id=0)
    return reference.tokenizer.batch_decode(new, skip_special_tokens=True)


def test_pipeline_equals_reference_with_different_k_per_image(setup):
    pipe, reference = setup
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    pixels[1] = 0.0
    pixels[1, :, 4:12, 4:12] = 3.0
    pixels[2] = torch.linspace(-2, 2, 32).view(1, 1, 32)
    texts, info = pipe.generate(pixels.numpy(), PROMPTS, max_new_tokens=5, min_new_tokens=5)
    assert len(set(info["num_kept"])) > 1, info
    assert texts == reference_answers(reference, pixels, PROMPTS)


@pytest.mark.slow  # exports an LLM
def test_onnxruntime_llm_equals_transformers(setup, tmp_path):
    from par_export.runtime.llm_onnx import OnnxRuntimeLLM, export_llm

    pipe, reference = setup
    export_llm(reference.model, tmp_path / "llm")
    ort_pipe = VisionLanguagePipeline(pipe.folder, reference.model, reference.tokenizer,
                                      llm=OnnxRuntimeLLM(tmp_path / "llm", reference.tokenizer.eos_token_id))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    pixels[0] = 0.0
    hf, info = pipe.generate(pixels.numpy(), PROMPTS, max_new_tokens=6, min_new_tokens=6)
    ort, _ = ort_pipe.generate(pixels.numpy(), PROMPTS, max_new_tokens=6, min_new_tokens=6)
    assert len(set(info["context_tokens"])) > 1  # left padding is exercised
    assert ort == hf


@pytest.mark.slow  # exports an LLM, runs onnxruntime-genai
def test_onnxruntime_genai_equals_transformers(setup, tmp_path):
    from par_export.runtime.llm_genai import GenaiLLM, export_genai

    pipe, reference = setup
    export_genai(reference.model, reference.tokenizer, tmp_path / "genai")
    genai_pipe = VisionLanguagePipeline(pipe.folder, reference.model, reference.tokenizer,
                                        llm=GenaiLLM(tmp_path / "genai"))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    pixels[2] = 0.0
    hf, info = pipe.generate(pixels.numpy(), PROMPTS, max_new_tokens=6, min_new_tokens=6)
    genai, _ = genai_pipe.generate(pixels.numpy(), PROMPTS, max_new_tokens=6, min_new_tokens=6)
    assert len(set(info["num_kept"])) > 1, info  # a different K per image
    assert genai == hf


def test_bad_prompts_are_clear_errors(setup):
    pipe, _ = setup
    pixels = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(PromptError, match="0 '<image>' placeholders"):
        pipe.generate(pixels, ["no image here"])
    with pytest.raises(PromptError, match="2 '<image>' placeholders"):
        pipe.generate(pixels, ["<image> and <image>"])
    with pytest.raises(PromptError, match="2 images for 1 prompts"):
        pipe.generate(np.zeros((2, 3, 32, 32), np.float32), ["<image> hi"])
    with pytest.raises(PromptError, match="more than the LLM's context"):
        pipe.generate(pixels, ["<image> " + "red " * 2000])


@pytest.mark.parametrize("llm", ["transformers", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_chat_cli_prints_answer_and_side_by_side_timings(tmp_path, capsys, llm):
    from PIL import Image

    from par_export.cli import main

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "img.png")
    assert main(["chat", "--model", "tiny", "--image", str(tmp_path / "img.png"), "--prompt", "what color is it ?",
                 "--compare-full", "--max-new-tokens", "4", "--llm", llm]) == 0
    out = capsys.readouterr().out
    assert "answer: " in out and "full-context answer: " in out
    reduced = next(line for line in out.splitlines() if line.startswith("reduced (par, K="))
    full = next(line for line in out.splitlines() if line.startswith("full "))
    assert int(reduced.split()[4]) < int(full.split()[2])  # fewer context tokens than full
    assert f"LLM, both rows: {'transformers' if llm == 'transformers' else 'ONNX Runtime'}" in out


def test_chat_json_times_both_rows_alike(tmp_path, capsys):
    """--json --repeat: both rows on one LLM runtime, the requested rounds, decode rates from timed steps;
    on an artifact whose graph can return every token, the full row's vision runs on the artifact too."""
    import json

    from PIL import Image

    from par_export.cli import main

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "img.png")
    assert main(["build", "--model", "tiny", "--fp32", "--backend", "onnxruntime", "--budget", "16",
                 "--out", str(tmp_path / "art")]) == 0
    capsys.readouterr()
    assert main(["chat", "--model", "tiny", "--artifact", str(tmp_path / "art"), "--image", str(tmp_path / "img.png"),
                 "--prompt", "what color is it ?", "--budget", "8", "--compare-full", "--max-new-tokens", "5",
                 "--repeat", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    reduced, full = result["rows"]
    assert result["repeat"] == 2 and reduced["rounds"] == full["rounds"] == 2
    assert reduced["context_tokens"] < full["context_tokens"] and reduced["context"] == "reduced (par, K=8)"
    assert reduced["vision_backend"].startswith("onnxruntime fp32") and "K = N = 64" in full["vision_backend"]
    for row in (reduced, full):
        assert row["ttft_ms"] >= row["prefill_ms"] > 0 and row["ttft_ms_min"] <= row["ttft_ms"]
        if row["new_tokens"] > 1:
            assert row["decode_tok_s"] > 0


def _embeds_as_runtime_sees_them(arrays: dict, meta: dict, embed) -> torch.Tensor:
    """``inputs_embeds [T, D]`` rebuilt from emitted files the way each runtime documents it:
    TensorRT-LLM reads row ``id - vocab_size`` of the prompt table for ids >= vocab_size;
    Edge-LLM puts the next visual row at each ``image_token_id`` position."""
    ids = torch.from_numpy(arrays["input_ids"].astype(np.int64))
    if meta["runtime"] == "tensorrt-llm":
        visual = ids >= meta["vocab_size"]
        rows = torch.from_numpy(arrays["prompt_embedding_table"].astype(np.float32))[ids[visual] - meta["vocab_size"]]
    else:
        visual = ids == meta["image_token_id"]
        rows = torch.from_numpy(arrays["visual_output"].astype(np.float32))
    with torch.no_grad():
        out = embed(torch.where(visual, 0, ids)).clone()
    out[visual] = rows.to(out.dtype)
    return out


@pytest.mark.parametrize("runtime", ["tensorrt-llm", "edge-llm"])
def test_emitted_inputs_rebuild_the_pipeline_context(setup, runtime, tmp_path):
    from safetensors.numpy import load_file

    from par_export.runtime.emit import emit, write_emitted

    pipe, _ = setup
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    arrays, meta = emit(pipe, pixels, PROMPTS[0], runtime)
    write_emitted(tmp_path / "out", arrays, meta)
    loaded = load_file(str(tmp_path / "out" / "inputs.safetensors"))
    assert loaded["input_ids"].dtype == np.int32 and set(loaded) == set(arrays)
    rebuilt = _embeds_as_runtime_sees_them(loaded, meta, pipe.embed)
    image_embeds, num_kept = pipe.reduce(pixels, PROMPTS[:1])
    assert meta["num_kept"] == int(num_kept[0]) and len(rebuilt) == len(arrays["input_ids"])
    spliced, _ = pipe.splice(PROMPTS[:1], image_embeds, num_kept)
    torch.testing.assert_close(rebuilt, spliced[0].float(), atol=1e-3, rtol=1e-3)  # fp16 rows


def test_emit_cli_writes_both_files_and_refuses_bad_prompts(setup, tiny_folders, tmp_path, capsys):
    from PIL import Image

    from par_export.cli import main

    pipe, _ = setup
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "img.png")
    args = ["emit", str(pipe.folder), "--model", str(tiny_folders[0]), "--image", str(tmp_path / "img.png"),
            "--runtime", "edge-llm"]
    assert main(args + ["--prompt", PROMPTS[1], "--out", str(tmp_path / "e")]) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [".par-export", "inputs.json", "inputs.safetensors"]
    assert main(args + ["--prompt", "no image", "--out", str(tmp_path / "bad")]) == 2
    assert "0 '<image>' placeholders" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
