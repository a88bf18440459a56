"""``par-export run``: one image and one prompt through a built artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from par_export.data.images import normalize
from par_export.engine.load import artifact_runners
from par_export.engine.verify import cast_feed
from par_export.reduce.prompt import rewrite_prompt


def load_image(path: str | Path, preprocess: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel_values [1, 3, S, S] float32, resized RGB uint8 [S, S, 3])`` with the model's normalization."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    size = preprocess["image_size"]
    resized = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return normalize(resized, preprocess["image_mean"], preprocess["image_std"])[None], resized


def query_embedding(folder: Path, preprocess: dict, prompt: str, runner, graph: dict) -> tuple[np.ndarray, str]:
    """The prompt's retrieval query (rewritten, tokenized, encoded); zeros when nothing is left."""
    from transformers import AutoTokenizer

    settings = preprocess["query"]
    query = rewrite_prompt(prompt, settings["template"], settings["rewrite"])
    dim = next(o for o in graph["outputs"] if o["name"] == "query_embeds")["shape"][-1]
    if not query:
        return np.zeros((1, dim), np.float32), query
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    batch = tokenizer([query], add_special_tokens=settings["add_special_tokens"], truncation=True,
                      max_length=settings["max_length"], return_tensors="np")
    out = runner.infer({"input_ids": batch["input_ids"].astype(np.int64),
                        "attention_mask": batch["attention_mask"].astype(np.int64)})
    return out["query_embeds"].astype(np.float32), query


def run_image(folder: str | Path, image: str | Path, prompt: str, budget: int | None = None,
              heatmap: str | Path | None = None) -> dict:
    """Reduced embeddings for one image: K, the kept indices, timings; optional PNG heatmap."""
    from par_export.plots import save_kept_overlay

    folder = Path(folder)
    manifest, runners = artifact_runners(folder)
    meta = manifest["metadata"]
    preprocess = json.loads((folder / "preprocess.json").read_text())
    pixels, rgb = load_image(image, preprocess)
    timings = {}
    query, rewritten = np.zeros((1, meta["query_dim"]), np.float32), ""
    if "query_encoder" in runners and preprocess.get("query"):
        with runners["query_encoder"] as runner:
            query, rewritten = query_embedding(folder, preprocess, prompt, runner, manifest["graphs"]["query_encoder"])
            timings["query_encoder_ms"] = runner.last_inference_ms
    feed = {"pixel_values": pixels, "query_embeds": query}
    if meta["budget_input"]:
        k = int(budget if budget is not None else meta["budget"])
        if not 1 <= k <= meta["width"]:
            raise ValueError(f"budget must be in [1, {meta['width']}] for this artifact, got {k}")
        feed["budget"] = np.array(k, dtype=np.int64)
    elif budget is not None:
        raise ValueError(f"this artifact's budget is {meta['budget']!r}, fixed at export; it takes no --budget")
    with runners["vision_par"] as runner:
        out = runner.infer(cast_feed(feed, manifest["graphs"]["vision_par"]))
        timings["vision_reduce_ms"] = runner.last_inference_ms
    kept = int(out["num_kept"][0])
    result = {"num_kept": kept, "tokens_per_image": meta["tokens_per_image"], "query": rewritten,
              "keep_index": out["keep_index"][0, :kept].tolist(), "image_embeds": out["image_embeds"][0, :kept],
              "timings_ms": timings, "backend": manifest["backend"], "precision": manifest["precision"]}
    if heatmap is not None:
        side = int(round(meta["tokens_per_image"] ** 0.5))
        save_kept_overlay(heatmap, rgb, result["keep_index"], side, f"{prompt!r}: kept {kept}/{side * side}")
    return result
