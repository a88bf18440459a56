"""``par-export run``: one image and one prompt through a built artifact."""

from __future__ import annotations

import statistics
from pathlib import Path

from par_export.artifact import Artifact
from par_export.errors import UsageError
from par_export.files import inside_any
from par_export.plots import save_kept_overlay
from par_export.processing import open_image


def timed(call, runner, repeat: int) -> tuple:
    """``call()``'s result and the runner's inference times (ms): one call (cold) when ``repeat`` is
    0, else a warm-up and ``repeat`` timed calls."""
    result = call()
    times = [runner.last_inference_ms]
    if repeat:
        times = []
        for _ in range(repeat):
            result = call()
            times.append(runner.last_inference_ms)
    return result, times


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_heatmap(path: str | Path | None) -> None:
    """Refuse a ``--heatmap`` path whose existing file is not a PNG (a user's file would be lost); a
    PNG there, such as the previous run's, is replaced."""
    if path is None or not Path(path).exists():
        return
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        raise UsageError(f"--heatmap {path}: exists and is not a regular file; name a .png file")
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise UsageError(f"--heatmap {path}: exists and is not a PNG, so it is not replaced; name another file")


def run_image(folder: str | Path, image: str | Path, prompt: str, budget: int | str | None = None,
              heatmap: str | Path | None = None, allow_unverified: bool = False, par: list[str] | tuple = (),
              repeat: int = 0) -> dict:
    """Reduced embeddings for one image: K, the kept indices, timings; optional PNG heatmap.
    An artifact whose verification did not pass is refused unless ``allow_unverified``;
    ``par``: ``--par`` overrides of the prompt rewrite. ``repeat``: time each graph over a warm-up
    and ``repeat`` calls (``timings_ms``: medians, ``*_min_ms``: minima) instead of one cold call."""
    folder = Path(folder)
    if heatmap is not None and inside_any(heatmap, [folder]):
        raise UsageError(f"--heatmap {heatmap}: inside the artifact {folder}, whose files are sealed; write it "
                         "elsewhere")
    check_heatmap(heatmap)
    with Artifact.open(folder, allow_unverified, par) as art:
        image_feed, layout = art.image_inputs([open_image(image)])
        samples = {}
        if art.query is not None:
            runner = art.runners["query_encoder"]
            (query, rewritten), samples["query_encoder"] = timed(lambda: art.embed_prompt(prompt), runner, repeat)
        else:
            query, rewritten = art.embed_prompt(prompt)
        out, samples["vision_reduce"] = timed(lambda: art.infer_vision(image_feed, query, budget),
                                              art.runners["vision_par"], repeat)
        reduced = art.rows(out, layout, rewritten)
    timings = {f"{name}_ms": statistics.median(times) for name, times in samples.items()}
    if repeat:
        timings.update({f"{name}_min_ms": min(times) for name, times in samples.items()})
    kept = reduced.num_kept
    # image_embeds: the rows the LLM receives (LLaVA-NeXT: with its newline rows)
    result = {"num_kept": kept, "tokens_per_image": reduced.num_tokens, "query": rewritten,
              "keep_index": reduced.keep_index.tolist(), "image_embeds": reduced.image_embeds,
              "pixel_values": image_feed["pixel_values"],
              "timings_ms": timings, "repeat": repeat, "backend": art.manifest.backend,
              "precision": art.manifest.precision,
              "heatmap": heatmap if heatmap is not None and art.contract.heatmap else None}
    if result["heatmap"] is not None:  # the first crop (LLaVA-NeXT: the base image, whose tokens come first)
        side = int(round(art.metadata.tokens_per_image ** 0.5))
        base = [i for i in result["keep_index"] if i < side * side]
        save_kept_overlay(heatmap, art.inputs.display_image(image_feed["pixel_values"][0]), base, side,
                          f"{prompt!r}: kept {kept}/{reduced.num_tokens}" +
                          (f" ({len(base)} in the base image)" if layout is not None else ""))
    return result
