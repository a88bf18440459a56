"""The reduced visual embeddings in the forms NVIDIA's LLM runtimes take (see
docs/llm_runtimes.md for the interfaces targeted; neither runtime runs on this project's
machines, so these are checked for shape, dtype and id layout only).

- TensorRT-LLM (legacy engine flow, e.g. 0.1x): ``prompt_embedding_table [rows, hidden]``,
  ``prompt_vocab_size [1]`` int32, ``tasks`` int32, and input ids where each visual row ``r``
  is the fake id ``vocab_size + r``; rows of all images are concatenated, K per image.
- TensorRT Edge-LLM 0.11: ``inputs_embeds`` assembled by its C++ runtime, which replaces each
  position holding the LLM's ``image_token_id`` with the next row of the visual output
  ``[sum_i K_i, hidden]`` fp16; so the prompt carries K_i image tokens per image. For an M-RoPE
  family (Qwen2.5-VL) kept tokens keep their original positions, as Edge-LLM's own pruner keeps
  them: the emitted file adds the keep-list (``keep_index [K]``, raster indices into the image's
  merged grid, the form its visual pruners return), ``image_grid_thw [1, 3]`` and the prompt's
  ``position_ids [3, T]`` (t, h, w), which equal transformers' ``get_rope_index`` when K = N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from par_export.errors import ParExportError
from par_export.files import atomic_folder


@dataclass
class TensorRTLLMInputs:
    input_ids: list[np.ndarray]  # per prompt, int32, visual rows as vocab_size + row
    prompt_embedding_table: np.ndarray  # [sum K, hidden]
    prompt_vocab_size: np.ndarray  # [1] int32
    tasks: np.ndarray  # [batch] int32 (0: one shared table)


@dataclass
class EdgeLLMInputs:
    input_ids: list[np.ndarray]  # per prompt, int32, K_i copies of image_token_id
    visual_output: np.ndarray  # [sum K, hidden] float16, rows in image order


def _rows(image_embeds: np.ndarray, num_kept: np.ndarray) -> np.ndarray:
    """The valid rows of ``image_embeds [B, W, D]`` (``num_kept [B]``) concatenated: ``[sum K, D]``."""
    return np.concatenate([image_embeds[b, : int(k)] for b, k in enumerate(num_kept)], axis=0)


def _check(ids_before: list[list[int]], ids_after: list[list[int]], num_kept: np.ndarray) -> None:
    if not len(ids_before) == len(ids_after) == len(num_kept):
        raise ParExportError(f"{len(ids_before)} prompts (before), {len(ids_after)} (after), {len(num_kept)} images: "
                         "one image per prompt expected")


def tensorrt_llm_inputs(ids_before: list[list[int]], ids_after: list[list[int]], image_embeds: np.ndarray,
                        num_kept: np.ndarray, vocab_size: int) -> TensorRTLLMInputs:
    """Text ids around each image and the reduced embeddings -> TensorRT-LLM p-tuning inputs."""
    _check(ids_before, ids_after, num_kept)
    table = _rows(image_embeds, num_kept)
    offsets = np.concatenate([[0], np.cumsum(num_kept)[:-1]]).astype(np.int64)
    ids = []
    for b, (before, after) in enumerate(zip(ids_before, ids_after)):
        fake = vocab_size + offsets[b] + np.arange(int(num_kept[b]))
        ids.append(np.concatenate([before, fake, after]).astype(np.int32))
    return TensorRTLLMInputs(ids, table, np.array([table.shape[0]], np.int32), np.zeros(len(ids), np.int32))


def edge_llm_inputs(ids_before: list[list[int]], ids_after: list[list[int]], image_embeds: np.ndarray,
                    num_kept: np.ndarray, image_token_id: int) -> EdgeLLMInputs:
    """Text ids around each image and the reduced embeddings -> Edge-LLM prompt ids + visual output."""
    _check(ids_before, ids_after, num_kept)
    ids = [np.concatenate([before, np.full(int(k), image_token_id), after]).astype(np.int32)
           for before, after, k in zip(ids_before, ids_after, num_kept)]
    return EdgeLLMInputs(ids, _rows(image_embeds, num_kept).astype(np.float16))


RUNTIMES = {
    "tensorrt-llm": "TensorRT-LLM legacy engine flow (ModelRunner.generate with prompt_table), API of v0.12-v0.16",
    "edge-llm": "TensorRT Edge-LLM 0.11 LLM engine (inputs_embeds assembled at image_token_id positions)",
}


def emit(pipe, pixel_values: np.ndarray, prompt: str, runtime: str, budget: int | None = None) -> tuple[dict, dict]:
    """One image + prompt through ``pipe`` (a :class:`VisionLanguagePipeline`) -> the arrays
    ``runtime`` takes and a JSON-able description (K, ids of note, the version targeted)."""
    if runtime not in RUNTIMES:
        raise ParExportError(f"unknown runtime {runtime!r}; expected one of {sorted(RUNTIMES)}")
    pipe.split_prompts([prompt], [0])  # placeholder check before the vision run
    image_embeds, num_kept = pipe.reduce(pixel_values, [prompt], budget)
    ids_before, ids_after = ([part] for part in pipe.split_prompts([prompt], num_kept)[0])
    config = pipe.model.config
    meta = {"runtime": runtime, "targets": RUNTIMES[runtime], "prompt": prompt, "num_kept": int(num_kept[0]),
            "hidden_size": int(image_embeds.shape[-1]), "eos_token_id": pipe.tokenizer.eos_token_id,
            "pad_token_id": pipe.tokenizer.pad_token_id}
    if runtime == "tensorrt-llm":
        vocab_size = config.text_config.vocab_size
        out = tensorrt_llm_inputs(ids_before, ids_after, image_embeds, num_kept, vocab_size)
        table = out.prompt_embedding_table.astype(np.float16)
        arrays = {"input_ids": out.input_ids[0], "prompt_embedding_table": table,
                  "prompt_vocab_size": out.prompt_vocab_size, "tasks": out.tasks}
        meta["vocab_size"] = vocab_size
    else:
        out = edge_llm_inputs(ids_before, ids_after, image_embeds, num_kept, config.image_token_id)
        arrays = {"input_ids": out.input_ids[0], "visual_output": out.visual_output}
        meta["image_token_id"] = int(config.image_token_id)
    return arrays, meta


def emit_mrope(adapter, inputs, result: dict, picture, prompt: str, runtime: str) -> tuple[dict, dict]:
    """One image's reduction by an artifact (``engine.run.run_image``'s ``result``) for an M-RoPE
    family: Edge-LLM's prompt ids and visual rows, plus the keep-list, the grid and the M-RoPE
    positions (module docstring). ``adapter`` places the rows (its ``inputs_from_rows``);
    ``inputs``: the checkpoint's processor and chat template."""
    if runtime != "edge-llm":
        raise ParExportError(f"--runtime {runtime}: an M-RoPE model's kept tokens need their (t, h, w) positions, "
                             "which only the edge-llm layout carries here (TensorRT-LLM's multimodal runner derives "
                             "them from the full grid); use --runtime edge-llm")
    encoded = inputs.encode([prompt], [picture])
    rows = torch.from_numpy(np.asarray(result["image_embeds"], np.float32))
    keep = torch.tensor(result["keep_index"])
    placed = adapter.inputs_from_rows(encoded["input_ids"], encoded["attention_mask"], encoded["image_grid_thw"],
                                      [rows], [keep])
    arrays = {"input_ids": placed["input_ids"][0].numpy().astype(np.int32),
              "visual_output": rows.numpy().astype(np.float16),
              "keep_index": keep.numpy().astype(np.int32),
              "image_grid_thw": encoded["image_grid_thw"].numpy().astype(np.int32),
              "position_ids": placed["position_ids"][1:, 0].numpy().astype(np.int32)}
    config = adapter.model.config
    meta = {"runtime": runtime, "targets": RUNTIMES[runtime], "prompt": prompt, "num_kept": int(result["num_kept"]),
            "tokens_per_image": int(result["tokens_per_image"]), "hidden_size": int(rows.shape[-1]),
            "image_token_id": int(config.image_token_id), "eos_token_id": inputs.tokenizer.eos_token_id,
            "pad_token_id": inputs.tokenizer.pad_token_id,
            "positions": "M-RoPE (t, h, w) per prompt position; kept tokens at their stock positions, text after "
                         "the image from the full grid's extent (transformers' get_rope_index when K = N)"}
    return arrays, meta


def write_emitted(folder, arrays: dict, meta: dict, overwrite: bool = False, inputs=(), artifact=None) -> list:
    """``inputs.safetensors`` + ``inputs.json`` in ``folder``, written whole or not at all; ``inputs``:
    the paths read (the output may not hold them); ``artifact``: the sealed folder it may not be in."""


    with atomic_folder(folder, overwrite, ParExportError, inputs=inputs, sealed=[artifact] if artifact else []) as (final, _):
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(final / "inputs.safetensors"))
        (final / "inputs.json").write_text(json.dumps(meta, indent=2) + "\n")
    return [Path(folder) / "inputs.safetensors", Path(folder) / "inputs.json"]
