"""``par-export chat``: one image and prompt, answered with the reduced context (and the full
one with ``--compare-full``), with a timing table measured like for like.

Both rows go through the same LLM runtime (``--llm``), are warmed up once and then timed
``repeat`` times, interleaved (reduced, full, reduced, full, ...), so that load on the machine
hits both alike; the table shows the median (and the minimum). Time to first token is the
vision call plus the LLM's prefill; the decode rate comes from the time each generated token
arrived (a streamer in transformers, the loop itself in ONNX Runtime / onnxruntime-genai),
not from subtracting two runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from par_export.engine.build import export_and_build
from par_export.engine.run import run_image
from par_export.errors import ParExportError
from par_export.memory import kv_cache_bytes
from par_export.models.families import family_for
from par_export.models.names import resolve_model
from par_export.processing import image_layout, open_image
from par_export.reduce import PARConfig
from par_export.runtime.llm_genai import GenaiLLM, export_genai
from par_export.runtime.llm_onnx import OnnxRuntimeLLM, export_llm
from par_export.runtime.pipeline import StepTimes, VisionLanguagePipeline, generate_placed


def transformers_generate(model, max_new_tokens: int, **inputs):
    """A ``generate(step_times, min_new_tokens)`` for :func:`measure`: greedy ``model.generate``."""
    def generate(step_times: list, min_new_tokens: int):
        return model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                              do_sample=False, streamer=StepTimes(step_times))
    return generate


def measure(contexts: dict, repeat: int, max_new_tokens: int) -> dict[str, dict]:
    """Time each context's ``(vision, generate)`` pair: one warm-up round, then ``repeat`` rounds
    interleaved across contexts. ``vision()`` returns what ``generate`` needs; ``generate(inputs,
    step_times, min_new_tokens)`` returns the new token ids ``[1, new]`` and appends one timestamp
    per token. The warm-up answers as the model would (its ids are returned); the timed rounds
    generate all ``max_new_tokens`` (EOS suppressed) so that every row's decode rate is measured
    over the same number of steps.

    Returns per context the warm-up's ``vision()`` result as ``inputs`` and its ``ids``, and
    ``{vision_ms, prefill_ms, ttft_ms, decode_tok_s}``, each a list over the timed rounds (decode:
    nan with fewer than 2 tokens).
    """
    samples = {name: {"vision_ms": [], "prefill_ms": [], "ttft_ms": [], "decode_tok_s": []} for name in contexts}
    warm_up = {}
    for round_ in range(repeat + 1):
        for name, (vision, generate) in contexts.items():
            start = time.perf_counter()
            inputs = vision()
            vision_ms = (time.perf_counter() - start) * 1e3
            steps: list[float] = []
            start = time.perf_counter()
            new = generate(inputs, steps, max_new_tokens if round_ else 0)
            if round_ == 0:  # warm-up: the answer
                warm_up[name] = {"inputs": inputs, "ids": new}
                continue
            prefill = (steps[0] - start) * 1e3 if steps else float("nan")
            decode = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 1 else float("nan")
            for key, value in zip(samples[name], (vision_ms, prefill, vision_ms + prefill, decode)):
                samples[name][key].append(value)
    return {name: {**warm_up[name], **samples[name]} for name in contexts}


def summary_row(name: str, tokens: int, new: int, timings: dict, config, vision_backend: str) -> dict:
    """One table row: median and min of each timing, context length, KV-cache size (fp32)."""
    row = {"context": name, "context_tokens": tokens, "new_tokens": new, "vision_backend": vision_backend,
           "kv_cache_mib": kv_cache_bytes(config, tokens + new, "fp32") / 2**20, "rounds": len(timings["ttft_ms"])}
    for key in ("vision_ms", "prefill_ms", "ttft_ms", "decode_tok_s"):
        values = [v for v in timings[key] if v == v]  # without nan
        row[key] = statistics.median(values) if values else float("nan")
        row[key + "_min"] = min(values) if values else float("nan")
    return row


@dataclass(frozen=True)
class ChatOptions:
    """How ``chat`` answers.

    Attributes:
        method, budget: the reducer and K (``None``: ``"auto"`` when chat exports the graph itself,
            the artifact's own with ``artifact``).
        artifact: a ``par-export build`` folder; ``None``: export and build one into a temporary folder.
        compare_full: also answer with the full visual context, through the same LLM runtime.
        max_new_tokens: tokens to generate; ``repeat``: timed rounds after one warm-up.
        llm: ``transformers``, ``onnxruntime`` (a greedy loop over the exported LLM) or
            ``onnxruntime-genai``.
        allow_unverified: use an artifact whose verification failed or never ran.
        par: ``--par NAME=VALUE`` overrides (with ``artifact``: the prompt rewrite only).
    """

    method: str = "par"
    budget: int | str | None = None
    artifact: str | Path | None = None
    compare_full: bool = False
    max_new_tokens: int = 16
    llm: str = "transformers"
    allow_unverified: bool = False
    par: tuple[str, ...] = ()
    repeat: int = 3


@torch.no_grad()
def chat(model_name: str, image: str | Path, prompt: str, options: ChatOptions | None = None) -> dict:
    """Answer ``prompt`` about ``image`` with ``model_name`` (a folder, ``demo`` or ``tiny``) on the reduced
    visual context: the answers and the timing rows (:func:`format_chat` prints them)."""
    options = options or ChatOptions()
    method, budget, llm, par = options.method, options.budget, options.llm, tuple(options.par)
    artifact = options.artifact
    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, clip_dir = resolve_model(model_name, Path(tmp))
        family = family_for(llava_dir)
        if not family.pipeline and family.onnx_llm and llm == "onnxruntime-genai":
            # its Qwen2_5_VL pipeline model derives the (t, h, w) positions from image_grid_thw, one per
            # grid token ("does not match image_grid_thw patch count"), with no input for kept tokens'
            raise ParExportError(f"--llm onnxruntime-genai: its {family.name} pipeline computes M-RoPE positions for "
                                 "every token of an image's grid and takes none for kept tokens; use --llm onnxruntime "
                                 "(the exported LLM with position_ids [3, B, T]) or transformers")
        if not family.pipeline and llm not in ("transformers", "onnxruntime" if family.onnx_llm else "transformers"):
            runtimes = "transformers or onnxruntime" if family.onnx_llm else "transformers"
            raise ParExportError(f"--llm {llm}: {family.name} answers with {runtimes} only so far")
        inputs = family.inputs(llava_dir)  # the checkpoint's processor and chat template
        picture = open_image(image)
        text = inputs.chat_prompt(prompt)
        if artifact is None:  # export + ONNX Runtime fp32 build for this method and budget
            artifact = export_and_build(llava_dir, Path(tmp) / "art", method, budget or "auto",
                                        PARConfig().with_overrides(par), clip_dir)
            par = ()  # applied in the graph
        model = family.load_model(llava_dir)
        options = replace(options, artifact=artifact, par=par)  # the artifact chat runs, and its prompt options
        if not family.pipeline:  # one image per graph call (LLaVA-NeXT, Qwen2.5-VL)
            ort_llm = None
            if llm == "onnxruntime":
                export_llm(model, Path(tmp) / "llm")
                ort_llm = OnnxRuntimeLLM(Path(tmp) / "llm", inputs.tokenizer.eos_token_id)
            return _chat_per_image(family, model, inputs, image, picture, prompt, text, options, ort_llm)
        tokenizer = inputs.tokenizer
        ort_llm = None
        if llm == "onnxruntime":
            export_llm(model, Path(tmp) / "llm")
            ort_llm = OnnxRuntimeLLM(Path(tmp) / "llm", tokenizer.eos_token_id)
        elif llm == "onnxruntime-genai":
            export_genai(model, tokenizer, Path(tmp) / "genai")
            ort_llm = GenaiLLM(Path(tmp) / "genai")
        with VisionLanguagePipeline(artifact, model, tokenizer, ort_llm, options.allow_unverified, par) as pipe:
            return _chat_pipeline(pipe, model, text, picture, options)


def _chat_pipeline(pipe: VisionLanguagePipeline, model, text: str, picture, options: ChatOptions) -> dict:
    """LLaVA-1.5: the artifact reduces, the pipeline splices the rows, ``llm`` answers; with
    ``compare_full`` the full context goes through the same splice and the same LLM runtime."""
    method, budget, llm, repeat = options.method, options.budget, options.llm, options.repeat
    compare_full, max_new_tokens = options.compare_full, options.max_new_tokens
    meta, manifest = pipe.manifest.metadata, pipe.manifest
    pixels = pipe.inputs.pixel_values([picture])
    backend = f"{manifest.backend} {manifest.precision} (artifact)"

    def spliced(rows):
        """``rows`` (``image_embeds``, ``num_kept``) with the prompt spliced around them: ``generate``'s input."""
        image_embeds, num_kept = rows()
        return image_embeds, num_kept, *pipe.splice([text], image_embeds, num_kept)

    def generate(inputs, steps, min_new_tokens):
        image_embeds, num_kept, embeds, mask = inputs
        if pipe.llm is not None:
            return torch.from_numpy(pipe.onnx_generate([text], image_embeds, num_kept, embeds, mask,
                                                       max_new_tokens, min_new_tokens, step_times=steps))
        return transformers_generate(model, max_new_tokens, inputs_embeds=embeds, attention_mask=mask,
                                     pad_token_id=pipe.tokenizer.pad_token_id)(steps, min_new_tokens)

    # "auto" only on an adaptive artifact
    contexts = {"reduced": (lambda: spliced(lambda: pipe.reduce(pixels, [text], budget)), generate)}
    backends = {"reduced": backend}
    n = meta.tokens_per_image
    if compare_full:
        if meta.budget_input and meta.width >= n:  # the same graph keeps every token: same backend
            def full_rows():
                return pipe.reduce(pixels, [text], n)
            backends["full"] = backend + f", K = N = {n}"
        else:  # the graph cannot return all N rows: the stock tower + projector
            def full_rows():
                features = model.model.get_image_features(pixel_values=torch.from_numpy(pixels))
                features = getattr(features, "pooler_output", features)  # transformers 5: an output object
                rows = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
                return rows.reshape(1, n, -1).float().numpy(), np.array([n])
            why = "its K is adaptive" if not meta.budget_input else f"its width is {meta.width}"
            backends["full"] = (f"PyTorch (the artifact's graph cannot return all {n} rows: {why}; an artifact "
                                f"exported with --budget K --k-max {n} times both rows on one backend)")
        contexts["full"] = (lambda: spliced(full_rows), generate)
    timings = measure(contexts, repeat, max_new_tokens)
    config = model.config.text_config
    rows, answers = [], {}
    for name, timing in timings.items():
        _, num_kept, _, mask = timing["inputs"]
        new = timing["ids"]  # given inputs_embeds only, generate() returns just the new tokens
        answers[name] = pipe.tokenizer.decode(new[0], skip_special_tokens=True)
        label = f"reduced ({method}, K={int(num_kept[0])})" if name == "reduced" else "full"
        rows.append(summary_row(label, int(mask.sum()), max_new_tokens, timing, config, backends[name]))
    runtime = {"transformers": "transformers (PyTorch)", "onnxruntime": "ONNX Runtime (greedy loop over the "
               "exported LLM)", "onnxruntime-genai": "onnxruntime-genai"}[llm]
    return {"answer": answers["reduced"], "full_answer": answers.get("full"), "rows": rows, "llm": runtime,
            "repeat": repeat}


def _chat_per_image(family, model, inputs, image, picture, prompt: str, text: str, options: ChatOptions,
                    ort_llm: OnnxRuntimeLLM | None = None) -> dict:
    """Families whose graph takes one image: reduce through the artifact (``run_image``), place the
    rows (and, for Qwen2.5-VL, their M-RoPE positions) with the family's adapter, answer with
    transformers or, given ``ort_llm``, with the exported LLM over ONNX Runtime (embeddings and
    M-RoPE positions from the adapter); ``compare_full`` answers from the stock inputs too,
    through the same LLM runtime (its vision runs in PyTorch: these graphs return at most their
    width of rows)."""
    method, budget, repeat = options.method, options.budget, options.repeat
    compare_full, max_new_tokens = options.compare_full, options.max_new_tokens
    encoded = inputs.encode([text], [picture])
    adapter = family.adapter(model, method, PARConfig(space="llm"), inputs.tokenizer)  # places rows only
    pad = inputs.tokenizer.pad_token_id

    def reduced_vision():
        """``(run_image's result, the model inputs with its rows placed)``."""
        result = run_image(options.artifact, image, prompt, budget, allow_unverified=options.allow_unverified,
                           par=options.par)
        rows = [torch.from_numpy(result["image_embeds"].astype("float32")).to(model.dtype)]
        return result, adapter.inputs_from_rows(encoded["input_ids"], encoded["attention_mask"],
                                                image_layout(encoded), rows,
                                                [torch.tensor(result["keep_index"])])

    def generate(model_inputs, steps, min_new_tokens):
        return generate_placed(model, adapter, model_inputs, max_new_tokens, ort_llm, min_new_tokens, steps, pad)

    def generate_reduced(vision_out, steps, min_new_tokens):
        return generate(vision_out[1], steps, min_new_tokens)

    contexts = {"reduced": (reduced_vision, generate_reduced)}
    full_vision = "PyTorch, inside the prefill (stock generate() runs the tower itself)"
    if compare_full and ort_llm is not None:  # the stock tower's rows at their stock positions, same LLM runtime
        contexts["full"] = (lambda: adapter.full_inputs(**{k: v for k, v in encoded.items() if k != "mm_token_type_ids"}),
                            generate)
        full_vision = "PyTorch (the stock tower and merger; the artifact's graph returns at most its width of rows)"
    elif compare_full:  # the stock path: generate() runs the tower inside its prefill
        contexts["full"] = (lambda: encoded, generate)
    timings = measure(contexts, repeat, max_new_tokens)
    result, reduced = timings["reduced"]["inputs"]
    config = model.config.text_config
    ids = timings["reduced"]["ids"]
    length = reduced["input_ids"].shape[1]
    manifest_backend = f"{result['backend']} {result['precision']} (artifact)"
    rows = [summary_row(f"reduced ({method}, K={result['num_kept']})", int(reduced["attention_mask"].sum()),
                        max_new_tokens, timings["reduced"], config, manifest_backend)]
    answer = inputs.tokenizer.decode(ids[0, length:], skip_special_tokens=True)
    full_answer = None
    if compare_full:
        full, length = timings["full"]["ids"], encoded["input_ids"].shape[1]
        full_answer = inputs.tokenizer.decode(full[0, length:], skip_special_tokens=True)
        rows.append(summary_row("full", length, max_new_tokens, timings["full"], config, full_vision))
    runtime = "ONNX Runtime (greedy loop over the exported LLM)" if ort_llm is not None else "transformers (PyTorch)"
    return {"answer": answer, "full_answer": full_answer, "rows": rows, "llm": runtime, "repeat": repeat}


def format_chat(result: dict) -> str:
    """The answers, the timing table (median over the rounds, min in brackets) and a footnote
    naming what ran each row."""
    lines = [f"answer: {result['answer']!r}"]
    if result["full_answer"] is not None:
        lines.append(f"full-context answer: {result['full_answer']!r}")
    lines.append(f"{'context':<26} {'vision ms':>9} {'tokens':>6} {'prefill ms':>10} {'TTFT ms':>8} "
                 f"{'(min)':>8} {'decode tok/s':>12} {'KV MiB':>7}")
    for r in result["rows"]:
        lines.append(f"{r['context']:<26} {r['vision_ms']:>9.1f} {r['context_tokens']:>6} {r['prefill_ms']:>10.1f} "
                     f"{r['ttft_ms']:>8.1f} {r['ttft_ms_min']:>8.1f} {r['decode_tok_s']:>12.1f} "
                     f"{r['kv_cache_mib']:>7.2f}")
    lines.append(f"median of {result['repeat']} interleaved rounds after a warm-up (which gave the answers); TTFT = "
                 f"vision + prefill (first token); decode from the arrival time of each generated token, all "
                 f"--max-new-tokens generated in the timed rounds; KV cache in fp32")
    lines.append(f"LLM, both rows: {result['llm']}")
    for r in result["rows"]:
        lines.append(f"vision, {r['context'].split(' (')[0]}: {r['vision_backend']}")
    return "\n".join(lines)
