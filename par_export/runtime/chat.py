"""``par-export chat``: one image and prompt, answered with the reduced context (and the full
one with ``--compare-full``), with a timing table."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from par_export.memory import kv_cache_bytes
from par_export.runtime.pipeline import VisionLanguagePipeline


def _timed_generate(model, max_new_tokens: int, **inputs) -> tuple[torch.Tensor, float, float]:
    """Output ids, time to first token (ms, a 1-token generate) and total time (ms), after a warm-up."""
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    ttft = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out, ttft, (time.perf_counter() - start) * 1e3


def _row(name: str, vision_ms: float, context: int, ttft: float, total: float, new: int, config) -> dict:
    decode = (new - 1) / ((total - ttft) / 1e3) if new > 1 and total > ttft else float("nan")
    return {"context": name, "vision_ms": vision_ms, "context_tokens": context, "ttft_ms": ttft,
            "decode_tok_s": decode, "kv_cache_mib": kv_cache_bytes(config, context + new, "fp32") / 2**20}


@torch.no_grad()
def chat(model_name: str, image: str | Path, prompt: str, method: str = "par", budget=None,
         artifact: str | Path | None = None, compare_full: bool = False, max_new_tokens: int = 16,
         llm: str = "transformers", allow_unverified: bool = False, par: list[str] | tuple = ()) -> dict:
    from par_export.engine.build import BuildOptions, build
    from par_export.export import export_model
    from par_export.export.exporter import resolve_model
    from par_export.models.families import family_for
    from par_export.processing import open_image
    from par_export.reduce import PARConfig

    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, clip_dir = resolve_model(model_name, Path(tmp))
        family = family_for(llava_dir)
        if not family.pipeline and llm != "transformers":
            raise ValueError(f"--llm {llm}: {family.name} answers with transformers only so far")
        inputs = family.inputs(llava_dir)  # the checkpoint's processor and chat template
        picture = open_image(image)
        text = inputs.chat_prompt(prompt)
        if artifact is None:  # export + ONNX Runtime fp32 build for this method and budget
            export_model(llava_dir, Path(tmp) / "onnx", method=method, budget=budget or "auto", clip_path=clip_dir,
                         config=PARConfig().with_overrides(par), progress=False)
            par = ()  # applied in the graph
            artifact = Path(tmp) / "art"
            build(Path(tmp) / "onnx", artifact, BuildOptions(precision="fp32", backend="onnxruntime"), progress=False)
        model = family.load_model(llava_dir)
        if not family.pipeline:  # one image per graph call (LLaVA-NeXT, Qwen2.5-VL)
            return _chat_per_image(family, model, inputs, artifact, image, picture, prompt, text, method, budget,
                                   compare_full, max_new_tokens, allow_unverified, par)
        tokenizer = inputs.tokenizer
        ort_llm = None
        if llm == "onnxruntime":
            from par_export.runtime.llm_onnx import OnnxRuntimeLLM, export_llm

            export_llm(model, Path(tmp) / "llm")
            ort_llm = OnnxRuntimeLLM(Path(tmp) / "llm", tokenizer.eos_token_id)
        elif llm == "onnxruntime-genai":
            from par_export.runtime.llm_genai import GenaiLLM, export_genai

            export_genai(model, tokenizer, Path(tmp) / "genai")
            ort_llm = GenaiLLM(Path(tmp) / "genai")
        pipe = VisionLanguagePipeline(artifact, model, tokenizer, ort_llm, allow_unverified, par)
        pixels = pipe.inputs.pixel_values([picture])
        start = time.perf_counter()
        image_embeds, num_kept = pipe.reduce(pixels, [text], budget)  # "auto" only on an adaptive artifact
        vision_ms = (time.perf_counter() - start) * 1e3
        embeds, mask = pipe.splice([text], image_embeds, num_kept)
        pad = tokenizer.pad_token_id
        if ort_llm is not None:
            def run(new: int):
                return pipe.onnx_generate([text], image_embeds, num_kept, embeds, mask, new)

            run(1)  # warm-up
            start = time.perf_counter()
            run(1)
            ttft = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            out = torch.from_numpy(run(max_new_tokens))
            total = (time.perf_counter() - start) * 1e3
        else:
            out, ttft, total = _timed_generate(model, max_new_tokens, inputs_embeds=embeds, attention_mask=mask,
                                               pad_token_id=pad)
        answer = tokenizer.decode(out[0], skip_special_tokens=True)
        rows = [_row(f"reduced ({method}, K={int(num_kept[0])})", vision_ms, int(mask.sum()), ttft, total,
                     out.shape[1], model.config.text_config)]
        full_answer = None
        if compare_full:
            full_inputs = inputs.encode([text], [picture])  # stock transformers inputs, image tokens expanded
            ids, pixel_values = full_inputs["input_ids"], full_inputs["pixel_values"]
            start = time.perf_counter()
            model.model.get_image_features(pixel_values=pixel_values)
            full_vision = (time.perf_counter() - start) * 1e3
            full, ttft, total = _timed_generate(model, max_new_tokens, input_ids=ids, pixel_values=pixel_values,
                                                pad_token_id=pad)
            full_answer = tokenizer.decode(full[0, ids.shape[1]:], skip_special_tokens=True)
            rows.append(_row("full", full_vision, ids.shape[1], ttft, total, full.shape[1] - ids.shape[1],
                             model.config.text_config))
    return {"answer": answer, "full_answer": full_answer, "rows": rows}


def _chat_per_image(family, model, inputs, artifact, image, picture, prompt: str, text: str, method: str, budget,
                    compare_full: bool, max_new_tokens: int, allow_unverified: bool = False,
                    par: list[str] | tuple = ()) -> dict:
    """Families whose graph takes one image: reduce through the artifact (``run_image``), place the
    rows (and, for Qwen2.5-VL, their M-RoPE positions) with the family's adapter, answer with
    transformers; ``compare_full`` answers from the stock inputs too."""
    from par_export.engine.run import run_image
    from par_export.reduce import PARConfig

    start = time.perf_counter()
    result = run_image(artifact, image, prompt, budget, allow_unverified=allow_unverified, par=par)
    vision_ms = (time.perf_counter() - start) * 1e3
    encoded = inputs.encode([text], [picture])
    adapter = family.adapter(model, method, PARConfig(space="llm"), inputs.tokenizer)  # places rows only
    rows = [torch.from_numpy(result["image_embeds"].astype("float32")).to(model.dtype)]
    reduced = adapter.inputs_from_rows(encoded["input_ids"], encoded["attention_mask"],
                                       encoded.get("image_grid_thw", encoded.get("image_sizes")), rows,
                                       [torch.tensor(result["keep_index"])])
    pad = inputs.tokenizer.pad_token_id
    out, ttft, total = _timed_generate(model, max_new_tokens, **reduced, pad_token_id=pad)
    length = reduced["input_ids"].shape[1]
    answer = inputs.tokenizer.decode(out[0, length:], skip_special_tokens=True)
    rows_table = [_row(f"reduced ({method}, K={result['num_kept']})", vision_ms, int(reduced["attention_mask"].sum()),
                       ttft, total, out.shape[1] - length, model.config.text_config)]
    full_answer = None
    if compare_full:
        start = time.perf_counter()
        model.model.get_image_features(**{k: v for k, v in encoded.items()
                                          if k in ("pixel_values", "image_sizes", "image_grid_thw")})
        full_vision = (time.perf_counter() - start) * 1e3
        full, ttft, total = _timed_generate(model, max_new_tokens, **encoded, pad_token_id=pad)
        full_answer = inputs.tokenizer.decode(full[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        rows_table.append(_row("full", full_vision, encoded["input_ids"].shape[1], ttft, total,
                               full.shape[1] - encoded["input_ids"].shape[1], model.config.text_config))
    return {"answer": answer, "full_answer": full_answer, "rows": rows_table}


def format_chat(result: dict) -> str:
    lines = [f"answer: {result['answer']!r}"]
    if result["full_answer"] is not None:
        lines.append(f"full-context answer: {result['full_answer']!r}")
    lines.append(f"{'context':<26} {'vision ms':>9} {'tokens':>6} {'TTFT ms':>8} {'decode tok/s':>12} {'KV MiB':>7}")
    for r in result["rows"]:
        lines.append(f"{r['context']:<26} {r['vision_ms']:>9.1f} {r['context_tokens']:>6} {r['ttft_ms']:>8.1f} "
                     f"{r['decode_tok_s']:>12.1f} {r['kv_cache_mib']:>7.2f}")
    return "\n".join(lines)
