"""``par-export run``: one image and one prompt through a built artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from par_export.engine.load import artifact_runners
from par_export.engine.verify import cast_feed
from par_export.files import inside_any
from par_export.processing import PROCESSOR_DIR, ModelInputs, hub_kwargs, open_image
from par_export.reduce.prompt import rewrite_prompt


class QueryInputs:
    """The artifact's query tokenizer (``tokenizer/``) and PAR's prompt rewrite, loaded once.

    Args:
        folder: the artifact folder.
        settings: ``metadata["query"]``: ``rewrite``, ``template``, ``add_special_tokens``, ``max_length``.
        dim: width of ``query_embeds`` (zeros are returned when the rewrite leaves nothing).
    """

    def __init__(self, folder: Path, settings: dict, dim: int):
        from transformers import AutoTokenizer

        self.settings = settings
        self.dim = dim
        self.tokenizer = AutoTokenizer.from_pretrained(Path(folder) / "tokenizer", **hub_kwargs())

    def embed(self, prompt: str, runner) -> tuple[np.ndarray, str]:
        """``query_embeds [1, Dq]`` float32 for one prompt, and the rewritten query."""
        settings = self.settings
        query = rewrite_prompt(prompt, settings["template"], settings["rewrite"])
        if not query:
            return np.zeros((1, self.dim), np.float32), query
        batch = self.tokenizer([query], add_special_tokens=settings["add_special_tokens"], truncation=True,
                               max_length=settings["max_length"], return_tensors="np")
        out = runner.infer({"input_ids": batch["input_ids"].astype(np.int64),
                            "attention_mask": batch["attention_mask"].astype(np.int64)})
        return out["query_embeds"].astype(np.float32), query


QUERY_OPTIONS = ("rewrite", "template")
"""The PAR options applied outside an artifact's graphs (to the prompt, before the query encoder);
every other option is traced into ``vision_par.onnx`` at export."""


def query_settings(settings: dict, par: list[str] | tuple = ()) -> dict:
    """``metadata["query"]`` with ``--par NAME=VALUE`` overrides of :data:`QUERY_OPTIONS` applied;
    an override of an option the graph fixed at export is refused (one line naming it)."""
    from par_export.reduce import PARConfig

    if not par:
        return settings
    PARConfig().with_overrides(par)  # unknown names and bad values: PARConfig's own message
    baked = sorted({item.split("=", 1)[0].strip() for item in par} - set(QUERY_OPTIONS))
    if baked:
        raise ValueError(f"--par {', '.join(baked)}: fixed in this artifact's graph when it was exported (see its "
                         f"manifest's metadata.config); export or build again with --par, or change only "
                         f"{' / '.join(QUERY_OPTIONS)} here")
    config = PARConfig(rewrite=settings["rewrite"], template=settings["template"]).with_overrides(par)
    return {**settings, "rewrite": config.rewrite, "template": config.template}


def query_inputs(folder: Path, manifest: dict, par: list[str] | tuple = ()) -> QueryInputs | None:
    """The artifact's :class:`QueryInputs` (``par``: :func:`query_settings` overrides), or ``None``
    when it has no query encoder."""
    settings = manifest["metadata"].get("query")
    if "query_encoder" not in manifest["graphs"] or not settings:
        if par:
            query_settings({"rewrite": "none", "template": "{rest}"}, par)  # still refuse graph options
            raise ValueError("--par: this artifact has no query encoder (a prompt-agnostic method); "
                             "it takes no PAR option")
        return None
    return QueryInputs(folder, query_settings(settings, par), manifest["metadata"]["query_dim"])


def budget_feed(meta: dict, budget: int | str | None) -> np.ndarray | None:
    """The ``budget`` input for a call, or ``None`` where the graph takes none; one rule for run,
    chat, emit and eval. ``None``: the artifact's own budget. ``"auto"``: only an artifact exported
    with ``--budget auto`` (adaptive K, no budget input). An int K: an artifact with a budget input,
    K in ``[1, width]``, or one whose K was fixed at export to that same K."""
    if budget is None:
        return np.array(int(meta["budget"]), np.int64) if meta["budget_input"] else None
    if budget == "auto":
        if meta["budget"] != "auto":
            raise ValueError(f"budget 'auto': this artifact keeps a fixed K (its budget is {meta['budget']!r}); pass "
                             "--budget K, or export with --budget auto for an adaptive K")
        return None
    if not meta["budget_input"]:
        if budget == meta["budget"]:
            return None
        raise ValueError(f"budget {budget}: this artifact's budget is {meta['budget']!r}, fixed at export; it takes no "
                         "other")
    if not 1 <= int(budget) <= meta["width"]:
        raise ValueError(f"budget must be in [1, {meta['width']}] for this artifact, got {budget}")
    return np.array(int(budget), np.int64)


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


def run_image(folder: str | Path, image: str | Path, prompt: str, budget: int | None = None,
              heatmap: str | Path | None = None, allow_unverified: bool = False, par: list[str] | tuple = (),
              repeat: int = 0) -> dict:
    """Reduced embeddings for one image: K, the kept indices, timings; optional PNG heatmap.
    An artifact whose verification did not pass is refused unless ``allow_unverified``;
    ``par``: ``--par`` overrides of the prompt rewrite (:func:`query_settings`). ``repeat``: time
    each graph over a warm-up and ``repeat`` calls (``timings_ms``: medians, ``*_min_ms``: minima)
    instead of one cold call."""
    import statistics

    from par_export.plots import save_kept_overlay

    from par_export.models.families import export_config

    folder = Path(folder)
    if heatmap is not None and inside_any(heatmap, [folder]):
        raise ValueError(f"--heatmap {heatmap}: inside the artifact {folder}, whose files are sealed; write it elsewhere")
    manifest, runners = artifact_runners(folder, allow_unverified)
    meta = manifest["metadata"]
    cfg = export_config(meta)
    inputs = ModelInputs.from_folder(folder / PROCESSOR_DIR)
    image_feed, layout = cfg.image_feed(meta, inputs.image_features([open_image(image)]))
    timings = {}
    query, rewritten = np.zeros((1, meta["query_dim"]), np.float32), ""
    encoder = query_inputs(folder, manifest, par)
    samples = {}
    if encoder is not None:
        with runners["query_encoder"] as runner:
            (query, rewritten), samples["query_encoder"] = timed(lambda: encoder.embed(prompt, runner), runner, repeat)
    feed = {**image_feed, "query_embeds": query}
    k = budget_feed(meta, budget)
    if k is not None:
        feed["budget"] = k
    with runners["vision_par"] as runner:
        feed = cast_feed(feed, manifest["graphs"]["vision_par"])
        out, samples["vision_reduce"] = timed(lambda: runner.infer(feed), runner, repeat)
    for name, times in samples.items():
        timings[f"{name}_ms"] = statistics.median(times)
    if repeat:
        timings.update({f"{name}_min_ms": min(times) for name, times in samples.items()})
    kept = int(out["num_kept"][0])
    n = cfg.num_tokens(meta, layout)
    # image_embeds: the rows the LLM receives (LLaVA-NeXT: with its newline rows)
    result = {"num_kept": kept, "tokens_per_image": n, "query": rewritten,
              "keep_index": out["keep_index"][0, :kept].tolist(), "image_embeds": cfg.rows(out, layout),
              "pixel_values": image_feed["pixel_values"],
              "timings_ms": timings, "repeat": repeat, "backend": manifest["backend"],
              "precision": manifest["precision"],
              "heatmap": heatmap if heatmap is not None and cfg.heatmap else None}
    if result["heatmap"] is not None:  # the first crop (LLaVA-NeXT: the base image, whose tokens come first)
        side = int(round(meta["tokens_per_image"] ** 0.5))
        base = [i for i in result["keep_index"] if i < side * side]
        save_kept_overlay(heatmap, inputs.display_image(image_feed["pixel_values"][0]), base, side,
                          f"{prompt!r}: kept {kept}/{n}" + (f" ({len(base)} in the base image)" if layout else ""))
    return result
