"""Qwen2.5-VL: reducers over each image's merged tokens, M-RoPE positions kept right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cli_export_and_build, encode_random_images
from PIL import Image

from par_export.cli import main
from par_export.models.families import family_for
from par_export.models.qwen2_5_vl import ReducedQwen2_5_VL
from par_export.reduce import PARConfig

QUESTIONS = ["what color is the circle ?", "how many stars are there ?"]
SIZES = [(80, 40), (30, 70)]  # width x height: two aspect ratios, two N


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from par_export.models.tiny import save_tiny_qwen2_5_vl

    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen") / "qwen2.5-vl")


@pytest.fixture(scope="module")
def batch(folder):
    """The checkpoint's image processor + chat template: left-padded batch of two images."""
    return encode_random_images(folder, QUESTIONS, SIZES)


@pytest.fixture(scope="module")
def k16_artifact(folder, tmp_path_factory):
    """``par-export export --budget 16 --k-max 16`` + ``build`` (fp32, ONNX Runtime) through the CLI:
    the artifact chat, emit, the pipeline and eval share."""
    return cli_export_and_build(folder, tmp_path_factory.mktemp("qwen-k16"), "--budget", "16", "--k-max", "16")[1]


@pytest.fixture(scope="module", params=["par", "text_sim", "cls_attn"])
def model(request, folder):
    return ReducedQwen2_5_VL.from_pretrained(folder, request.param, PARConfig(k_max=4096))


def stock_positions(model, batch):
    positions, _ = model.model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                    batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    return positions  # [3, B, T]


def test_processor_expands_each_image_to_its_merged_token_count(folder, batch):
    image_id = ReducedQwen2_5_VL.from_pretrained(folder).model.config.image_token_id
    counts = (batch["input_ids"] == image_id).sum(1).tolist()
    assert counts == (batch["image_grid_thw"].prod(-1) // 4).tolist() and counts[0] != counts[1]
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)


def test_budget_n_reproduces_stock_generate_and_positions(model, batch):
    n = model.tokens_per_image(batch["image_grid_thw"])
    stock = model.model.generate(**batch, max_new_tokens=8, do_sample=False)[:, batch["input_ids"].shape[1]:]
    ours = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"],
                          budget=n, max_new_tokens=8, do_sample=False)
    assert torch.equal(stock, ours)
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   batch["image_grid_thw"], budget=n)
    assert torch.equal(reduced.model_inputs["position_ids"][1:], stock_positions(model, batch))


def test_kept_tokens_keep_their_stock_positions_and_text_continues_as_stock(model, batch):
    budgets = [5, 9]  # a different K per image
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   batch["image_grid_thw"], budget=budgets)
    image_id = model.model.config.image_token_id
    stock, ours = stock_positions(model, batch), reduced.model_inputs["position_ids"][1:]
    for b, out in enumerate(reduced.reduction):
        kept = out.keep_index[0, :int(out.num_kept[0])]
        assert len(kept) == budgets[b]
        full_ids, new_ids = batch["input_ids"][b], reduced.model_inputs["input_ids"][b]
        full_image = (full_ids == image_id).nonzero().flatten()
        new_image = (new_ids == image_id).nonzero().flatten()
        assert torch.equal(ours[:, b, new_image], stock[:, b, full_image[kept]])
        after_full, after_new = full_image[-1] + 1, new_image[-1] + 1  # the text after the image
        assert torch.equal(ours[:, b, after_new:], stock[:, b, after_full:])


def test_decoding_positions_continue_for_a_batch_with_different_k(model, batch):
    """generate == a no-cache greedy loop that feeds explicit positions (+1 per new token)."""
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   batch["image_grid_thw"], budget=[4, 11])
    inputs = reduced.model_inputs
    model.model.model.rope_deltas = None
    generated = model.model.generate(**inputs, max_new_tokens=5, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    ids, mask, positions = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    with torch.no_grad():
        for _ in range(5):
            logits = model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 mm_encoder_outputs=inputs["mm_encoder_outputs"], use_cache=False).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
            positions = torch.cat([positions, positions[..., -1:] + 1], -1)
    assert torch.equal(generated, ids[:, inputs["input_ids"].shape[1]:])


def test_received_attention_is_a_distribution_per_image(folder, batch):
    model = ReducedQwen2_5_VL.from_pretrained(folder, "cls_attn")
    features = model.vision_features(batch["pixel_values"], batch["image_grid_thw"])
    for (tokens, received), n in zip(features, model.tokens_per_image(batch["image_grid_thw"])):
        assert tokens.shape[0] == received.shape[0] == n and (received > 0).all()
        assert abs(float(received.sum()) - 1.0) < 1e-4
    out, rows = model.reduce_images(batch["pixel_values"], None, 6, features, batch["image_grid_thw"])
    assert [r.shape[0] for r in rows] == [6, 6]


def test_budget_above_one_images_n_names_it(model, batch):
    n = model.tokens_per_image(batch["image_grid_thw"])
    small = int(np.argmin(n))
    with pytest.raises(ValueError, match=f"image {small}: budget {max(n)} is outside"):
        model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                             batch["image_grid_thw"], budget=max(n))


def test_clip_is_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="no CLIP"):
        ReducedQwen2_5_VL.from_pretrained(folder, clip_path=tmp_path)


def test_exported_tower_equals_the_stock_tower(folder, batch):
    """The graph's tower (masked attention from window ids and image bounds, host-side index inputs)
    gives the stock merged features and the adapter's received attention, for each image alone and
    for both images in one call."""
    from par_export.models.qwen2_5_vl import QwenVisionParGraph, vision_inputs

    model = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(k_max=16))
    graph = QwenVisionParGraph(model, "input").eval()
    features = model.vision_features(batch["pixel_values"], batch["image_grid_thw"])
    with torch.no_grad():
        stock = model.model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    grids = batch["image_grid_thw"]
    start = 0
    for i, grid in enumerate(grids):
        patches = int(grid.prod())
        index = vision_inputs(model.visual, grid[None])
        with torch.no_grad():
            tokens, received = graph.merged_tokens(batch["pixel_values"][start:start + patches], **index)
        torch.testing.assert_close(tokens, stock[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(received, features[i][1], atol=1e-6, rtol=1e-5)
        start += patches
    with torch.no_grad():
        tokens, received = graph.merged_tokens(batch["pixel_values"], **vision_inputs(model.visual, grids))
    torch.testing.assert_close(tokens, torch.cat(stock), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(received, torch.cat([f[1] for f in features]), atol=1e-6, rtol=1e-5)


def test_several_images_in_one_graph_call_equal_each_image_reduced_alone(folder, batch):
    """One call of the vision graph with both images (different N, one without a prompt) gives each
    image's K, kept indices and rows of the adapter's per-image reduction."""
    from par_export.models.qwen2_5_vl import QwenVisionParGraph, vision_inputs
    from par_export.reduce.retrieval import pool_prompt

    for method in ("par", "visionzip_mean", "random"):
        model = ReducedQwen2_5_VL.from_pretrained(folder, method, PARConfig(k_max=16))
        graph = QwenVisionParGraph(model, "input").eval()
        grids = batch["image_grid_thw"]
        query = pool_prompt(*model.query_encoder([QUESTIONS[0], ""]))[0]  # [2, D]; zeros for the second image
        with torch.no_grad():
            embeds, num_kept, keep_index = graph(batch["pixel_values"], **vision_inputs(model.visual, grids),
                                                 query_embeds=query, budget=torch.tensor(7))
        outputs, rows = model.reduce_images(batch["pixel_values"], [QUESTIONS[0], ""], 7, image_grid_thw=grids)
        for i, (out, row) in enumerate(zip(outputs, rows)):
            assert int(num_kept[i]) == int(out.num_kept[0]) == 7, method
            assert keep_index[i, :7].tolist() == out.keep_index[0].tolist(), method
            torch.testing.assert_close(embeds[i, :7], row, atol=1e-5, rtol=1e-5)


def test_export_build_verify_and_run_equal_the_adapter_fed_by_the_processor(folder, tmp_path, capsys):
    from par_export.engine.run import run_image

    onnx, art = cli_export_and_build(folder, tmp_path, "--budget", "8", "--k-max", "16")
    assert "verify (fp32): PASSED" in capsys.readouterr().out

    reference = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(k_max=16))
    inputs = family_for(folder).inputs(folder)
    rng = np.random.default_rng(3)
    for w, h in [(80, 40), (36, 72)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        enc = inputs.encode([QUESTIONS[0]], [Image.open(path).convert("RGB")])
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            enc["image_grid_thw"], prompts=[QUESTIONS[0]], budget=8)
        out = expected.reduction[0]
        result = run_image(art, path, QUESTIONS[0], budget=8)
        assert result["keep_index"] == out.keep_index[0, :8].tolist()
        np.testing.assert_allclose(result["image_embeds"], expected.image_features[0].numpy(), atol=1e-4)
        assert main(["run", str(art), "--image", str(path), "--prompt", QUESTIONS[0], "--budget", "8"]) == 0
        n = reference.tokens_per_image(enc["image_grid_thw"])[0]
        assert f"kept 8/{n} tokens" in capsys.readouterr().out

    # both images in one call of the built graph: each gets its single-image result
    from par_export.artifact import Artifact

    pictures = [Image.open(tmp_path / f"{w}x{h}.png").convert("RGB") for w, h in [(80, 40), (36, 72)]]
    with Artifact.open(art) as artifact:
        feed, sizes = artifact.image_inputs(pictures)
        queries = np.concatenate([artifact.embed_prompt(q)[0] for q in (QUESTIONS[0], "")])
        out = artifact.infer_vision(feed, queries, 8)
    for i, (w, h) in enumerate([(80, 40), (36, 72)]):
        alone = run_image(art, tmp_path / f"{w}x{h}.png", [QUESTIONS[0], ""][i], budget=8)
        assert sizes[i] == alone["tokens_per_image"] and int(out["num_kept"][i]) == 8
        assert out["keep_index"][i, :8].tolist() == alone["keep_index"]
        np.testing.assert_allclose(out["image_embeds"][i, :8], alone["image_embeds"], atol=1e-5)

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(small)
    assert main(["run", str(art), "--image", str(small), "--prompt", QUESTIONS[0]]) == 2
    err = capsys.readouterr().err
    assert "merged tokens, fewer than the 16" in err and len([x for x in err.splitlines() if "error" in x]) == 1


def test_eval_on_jsonl_for_a_qwen_folder(folder, tmp_path, capsys):
    """`par-export eval --data`: answers are the stock model's own, so full scores 1.0; a budget
    above every image's N keeps all tokens and must score 1.0 too."""
    import csv
    import json

    from par_export.eval.jsonl import normalize_answer

    inputs = family_for(folder).inputs(folder)
    model = ReducedQwen2_5_VL.from_pretrained(folder).model
    rng = np.random.default_rng(5)
    lines = []
    for i, (w, h) in enumerate([(80, 40), (36, 72), (64, 64)]):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image.save(tmp_path / f"{i}.png")
        enc = inputs.encode([QUESTIONS[i % 2]], [image])
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0)
        answer = normalize_answer(inputs.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        lines.append(json.dumps({"question_id": i, "image": f"{i}.png", "text": QUESTIONS[i % 2],
                                 "answer": answer.split()[0]}))
    (tmp_path / "eval.jsonl").write_text("\n".join(lines))
    assert main(["eval", "--model", str(folder), "--data", str(tmp_path / "eval.jsonl"), "--images", str(tmp_path),
                 "--methods", "par,cls_attn", "--budgets", "4,100000", "--out", str(tmp_path / "out")]) == 0
    rows = {(r["method"], r["budget"]): r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    full = next(r for (m, _), r in rows.items() if m == "full")
    assert float(full["accuracy"]) == 1.0 and full["n"] == "3"
    for method in ("par", "cls_attn"):
        assert float(rows[(method, "100000")]["accuracy"]) == 1.0
        assert float(rows[(method, "100000")]["mean_kept"]) == float(full["mean_kept"])
        assert float(rows[(method, "4")]["mean_kept"]) == 4.0


def test_video_input_is_not_supported_yet(folder, batch, tmp_path, capsys):
    model = ReducedQwen2_5_VL.from_pretrained(folder)
    ids = batch["input_ids"].clone()
    ids[0, -1] = model.model.config.video_token_id
    with pytest.raises(ValueError, match="video input is not supported yet"):
        model.prepare_inputs(ids, batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"], budget=4)
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert main(["chat", "--model", "tiny", "--image", str(tmp_path / "clip.mp4"), "--prompt", "what ?"]) == 2
    assert "video input is not supported yet" in capsys.readouterr().err


def test_chat_compare_full_answers_alike_when_k_is_n(folder, k16_artifact, tmp_path, capsys):
    """chat on a Qwen artifact: rows from the graph, M-RoPE positions from their indices; with
    K = N (a 32x32 image: 16 merged tokens, the graph's width) the reduced answer is the full one,
    both rows through the same LLM runtime; the ONNX Runtime LLM answers as transformers does."""
    art = k16_artifact
    image = tmp_path / "square.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    answers = {}
    for runtime in ("transformers", "onnxruntime"):
        capsys.readouterr()
        assert main(["chat", "--model", str(folder), "--artifact", str(art), "--image", str(image), "--prompt",
                     QUESTIONS[0], "--budget", "16", "--compare-full", "--max-new-tokens", "6", "--llm", runtime,
                     "--repeat", "1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        answer = next(x for x in lines if x.startswith("answer: "))[len("answer: "):]
        full = next(x for x in lines if x.startswith("full-context answer: "))[len("full-context answer: "):]
        assert answer == full and any(x.startswith("reduced (par, K=16)") for x in lines)
        assert any(x.startswith("LLM, both rows: " + ("ONNX Runtime" if runtime == "onnxruntime" else "transformers"))
                   for x in lines)
        answers[runtime] = answer
    assert answers["onnxruntime"] == answers["transformers"]


def test_sequential_positions_ablation_gives_kept_tokens_consecutive_positions(folder, batch):
    """``par:positions=sequential``: the kept tokens sit at consecutive positions after the text
    before them (what a reducer that ignores M-RoPE gives); stock keeps their (t, h, w)."""
    stock = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(budget=4))
    ablated = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(budget=4, positions="sequential"))
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    ours, theirs = stock.prepare_inputs(*args), ablated.prepare_inputs(*args)
    image_id = stock.model.config.image_token_id
    ids = ours.model_inputs["input_ids"]
    assert torch.equal(ids, theirs.model_inputs["input_ids"])
    for b in range(ids.shape[0]):
        image = (ids[b] == image_id).nonzero().squeeze(1)
        first = theirs.model_inputs["position_ids"][1:, b, image[0] - 1]  # <|vision_start|>
        expected = first[:, None] + torch.arange(1, len(image) + 1)
        assert torch.equal(theirs.model_inputs["position_ids"][1:, b, image], expected)
        assert not torch.equal(ours.model_inputs["position_ids"][1:, b, image], expected)
    with pytest.raises(ValueError, match="positions must be one of"):
        PARConfig(positions="shuffled")


def test_procedural_eval_for_a_qwen_folder_with_downsample_and_the_ablation(folder, tmp_path, capsys):
    """`par-export eval` on the procedural VQA for a dynamic-resolution family: scenes in several
    sizes through the folder's processor; ``downsample`` (the processor makes the image smaller)
    keeps at most K tokens per image; the ablation runs beside PAR on the same questions."""
    import csv

    assert main(["eval", "--model", str(folder), "--methods", "par,par:positions=sequential,downsample,random",
                 "--budgets", "8,32", "--n", "6", "--batch", "3", "--out", str(tmp_path / "out")]) == 0
    rows = {(r["method"], r["budget"]): r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert {m for m, _ in rows} == {"full", "par", "par:positions=sequential", "downsample", "random"}
    for budget in (8, 32):
        assert float(rows[("par", str(budget))]["mean_kept"]) == budget
        assert 1 <= float(rows[("downsample", str(budget))]["mean_kept"]) <= budget
    full = next(r for (m, _), r in rows.items() if m == "full")
    assert float(full["mean_kept"]) > 32 and full["n"] == "6"
    assert any(k.startswith("accuracy_") and k not in ("accuracy_low", "accuracy_high") for k in full)
    out = capsys.readouterr().out
    assert "par:positions=sequential" in out and "downsample" in out


def test_downsample_is_refused_where_a_smaller_image_gives_no_fewer_tokens(tmp_path, capsys):
    assert main(["eval", "--model", "tiny", "--methods", "downsample", "--budgets", "8", "--n", "2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "downsample" in err and "no fewer tokens" in err and len([x for x in err.splitlines() if "error" in x]) == 1
    assert not (tmp_path / "out").exists()


def test_tiny_qwen_tokenizer_keeps_each_special_token_whole():
    from par_export.models.tiny import QWEN_SPECIAL, qwen_word_tokenizer

    tokenizer = qwen_word_tokenizer()
    ids = tokenizer("".join(QWEN_SPECIAL) + "user", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL + ["user"]]


def test_onnx_llm_with_mrope_positions_answers_as_transformers(folder, batch, tmp_path):
    """The reduced context (K = 6 per image, different N per image, left padded) through the
    exported LLM (``position_ids [3, B, T]``, KV cache) over ONNX Runtime: the same greedy tokens
    as transformers' ``generate`` on the same inputs."""
    from par_export.runtime.llm_onnx import OnnxRuntimeLLM, export_llm

    model = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(k_max=4096))
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   batch["image_grid_thw"], budget=6).model_inputs
    model.model.model.rope_deltas = None
    expected = model.model.generate(**reduced, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                    pad_token_id=0)[:, reduced["input_ids"].shape[1]:]
    export_llm(model.model, tmp_path / "llm")
    llm = OnnxRuntimeLLM(tmp_path / "llm")
    embeds, mask, positions = model.prompt_embeds(reduced)
    got = llm.generate(embeds, mask, 6, position_ids=positions)
    assert np.array_equal(got, expected.numpy())
    # the prefill's logits match transformers' to float error; text-only positions would not
    past = {n: np.zeros((2, llm.kv_heads, 0, llm.head_dim), np.float32) for n in llm.past_names}

    def prefill(positions):
        return llm.session.run(["logits"], {"inputs_embeds": embeds, "attention_mask": mask,
                                            "position_ids": positions, **past})[0][mask == 1]

    with torch.no_grad():
        reference = model.model(**reduced).logits[reduced["attention_mask"] == 1].numpy()
    stock = prefill(positions)
    np.testing.assert_allclose(stock, reference, atol=1e-4)
    text_only = prefill(np.ascontiguousarray(np.broadcast_to(reduced["position_ids"][:1].numpy(), (3, *mask.shape))))
    assert np.abs(text_only - reference).max() > max(5e-4, 100 * np.abs(stock - reference).max())
    with pytest.raises(ValueError, match=r"M-RoPE position_ids \[3, B, T\]"):
        llm.generate(embeds, mask, 2)


def test_emit_edge_llm_for_qwen_carries_keep_list_and_mrope_positions(folder, k16_artifact, tmp_path, capsys):
    """`par-export emit --runtime edge-llm` on a Qwen artifact: K image tokens in the ids, K fp16
    rows, the keep-list and the prompt's M-RoPE positions; with K = N (a 32x32 image, 16 merged
    tokens) the positions are transformers' own ``get_rope_index``; TensorRT-LLM is refused."""
    from safetensors.numpy import load_file

    art = k16_artifact
    image = tmp_path / "square.png"
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    picture.save(image)
    for budget in ("16", "5"):
        out = tmp_path / f"emit{budget}"
        assert main(["emit", str(art), "--model", str(folder), "--image", str(image), "--prompt", QUESTIONS[0],
                     "--runtime", "edge-llm", "--budget", budget, "--out", str(out)]) == 0
        arrays = load_file(str(out / "inputs.safetensors"))
        k = int(budget)
        model = ReducedQwen2_5_VL.from_pretrained(folder)
        image_id = model.model.config.image_token_id
        assert int((arrays["input_ids"] == image_id).sum()) == k == len(arrays["keep_index"])
        assert arrays["visual_output"].shape == (k, model.model.config.text_config.hidden_size)
        assert arrays["visual_output"].dtype == np.float16 and arrays["position_ids"].shape == (3, len(arrays["input_ids"]))
        assert arrays["image_grid_thw"].tolist() == [[1, 8, 8]]
        if k == 16:
            encoded = family_for(folder).inputs(folder).encode([QUESTIONS[0]], [picture])
            assert arrays["input_ids"].tolist() == encoded["input_ids"][0].tolist()
            assert np.array_equal(arrays["position_ids"], stock_positions(model, encoded)[:, 0].numpy())
        else:  # the kept tokens' stock (t, h, w): h and w from the keep-list, within the 4 x 4 merged grid
            where = arrays["input_ids"] == image_id
            start = arrays["position_ids"][0, where][0]
            assert np.array_equal(arrays["position_ids"][1, where] - start, arrays["keep_index"] // 4)
            assert np.array_equal(arrays["position_ids"][2, where] - start, arrays["keep_index"] % 4)
    capsys.readouterr()
    assert main(["emit", str(art), "--model", str(folder), "--image", str(image), "--prompt", QUESTIONS[0],
                 "--runtime", "tensorrt-llm", "--out", str(tmp_path / "trtllm")]) == 2
    err = capsys.readouterr().err
    assert "use --runtime edge-llm" in err and not (tmp_path / "trtllm").exists()


def test_pipeline_and_eval_through_a_qwen_artifact_equal_pytorch(folder, k16_artifact, tmp_path, capsys):
    """The LLM pipeline for Qwen2.5-VL: each image (two sizes) reduced by the artifact, its rows
    placed at their M-RoPE positions; answers equal the PyTorch adapter's at the same K, with
    transformers and with the exported LLM over ONNX Runtime. `eval --backend ART` gives the same
    first-token answers as `--backend torch` on the procedural scenes."""
    from par_export.eval.vqa import evaluate
    from par_export.runtime.llm_onnx import OnnxRuntimeLLM, export_llm
    from par_export.runtime.pipeline import VisionLanguagePipeline

    art = k16_artifact
    reference = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig(k_max=16))
    inputs = family_for(folder).inputs(folder)
    rng = np.random.default_rng(11)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(64, 40), (40, 72)]]
    enc = inputs.encode(QUESTIONS, images)
    expected = reference.generate(enc["input_ids"], enc["attention_mask"], enc["pixel_values"], enc["image_grid_thw"],
                                  prompts=QUESTIONS, budget=12, max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = inputs.tokenizer.batch_decode(expected, skip_special_tokens=True)
    export_llm(reference.model, tmp_path / "llm")
    for llm in (None, OnnxRuntimeLLM(tmp_path / "llm")):
        with VisionLanguagePipeline(art, reference.model, inputs.tokenizer, llm=llm) as pipe:
            texts, info = pipe.answer(images, QUESTIONS, budget=12, max_new_tokens=5)
        assert texts == expected and info["num_kept"] == [12, 12]

    seeds = dict(split="val", n=6, batch=3, progress=False)
    torch_run = evaluate(folder, None, ["par"], [8], **seeds)
    artifact_run = evaluate(folder, None, ["par"], [8], artifacts={("par", 8): art}, **seeds)
    assert torch_run["tallies"][("par", 8)].predictions == artifact_run["tallies"][("par", 8)].predictions
    assert artifact_run["tallies"][("par", 8)].kept == [8] * 6
    assert main(["eval", "--model", str(folder), "--backend", str(art), "--budgets", "8", "--n", "3",
                 "--out", str(tmp_path / "eval")]) == 0
    assert "par" in capsys.readouterr().out


def test_chat_refuses_onnxruntime_genai_for_qwen_with_the_reason(folder, tmp_path, capsys):
    image = tmp_path / "square.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["chat", "--model", str(folder), "--image", str(image), "--prompt", QUESTIONS[0],
                 "--llm", "onnxruntime-genai"]) == 2
    err = capsys.readouterr().err
    assert "takes none for kept tokens" in err and "--llm onnxruntime" in err
