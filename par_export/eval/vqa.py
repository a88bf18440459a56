"""Accuracy per reducer and budget on the procedural VQA, relative to full tokens.

Every sample is answered with one greedy token after the prompt (the answers are one
word), by the full model and by each reducer at each budget; the vision tower runs once
per batch and is shared by all of them.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from par_export.artifact import read_manifest
from par_export.data.vqa import render, sample, split_seeds
from par_export.engine.build import export_and_build
from par_export.errors import ParExportError
from par_export.eval.jsonl import is_correct, load_images, read_jsonl
from par_export.files import atomic_folder
from par_export.flops import llm_prefill_flops
from par_export.models.dart import DartSettings, dart_first_token_logits
from par_export.models.families import family_for
from par_export.plots import kept_token_map, save_figure
from par_export.processing import IMAGE_LAYOUT_KEYS, ModelInputs
from par_export.reduce import PARConfig, reducer_class
from par_export.runtime.pipeline import VisionLanguagePipeline


@dataclass
class Tally:
    """One method and budget's answers: ``outcomes[i]`` is whether sample ``i`` was answered right
    (samples in the same order for every method: intervals are paired), ``kept`` its K,
    ``predictions`` the answers given (first-token ids on the procedural split, generated text on
    JSONL), ``kinds`` each sample's question type (procedural split)."""

    outcomes: list[bool] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    predictions: list = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, right, predictions, kinds=()) -> None:
        self.outcomes += [bool(r) for r in right]
        self.predictions += list(predictions)
        self.kinds += list(kinds)

    def agreement(self, full: Tally) -> float:
        """Share of samples answered as the full model answered them."""
        same = [a == b for a, b in zip(self.predictions, full.predictions)]
        return sum(same) / max(len(same), 1)

    def accuracy_by_kind(self) -> dict[str, float]:
        """Accuracy per question type (empty without types)."""
        kinds = sorted(set(self.kinds))
        return {kind: float(np.mean([o for o, k in zip(self.outcomes, self.kinds) if k == kind])) for kind in kinds}

    @property
    def correct(self) -> int:
        return sum(self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)


BOOTSTRAP_RESAMPLES = 1000
IMAGE_INPUTS = ("pixel_values", *IMAGE_LAYOUT_KEYS)  # what each family's adapter reads besides the ids


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` sample indices drawn with replacement, shared by every method of an
    evaluation so that their intervals come from the same resampled question sets."""
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def accuracy_interval(tally: Tally, indices: np.ndarray) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``tally``'s accuracy over the resampled ``indices``."""
    outcomes = np.asarray(tally.outcomes, np.float64)
    if len(outcomes) != indices.shape[1]:
        raise ParExportError(f"{len(outcomes)} outcomes for resamples of {indices.shape[1]} samples")
    low, high = np.percentile(outcomes[indices].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def method_spec(spec: str, config: PARConfig) -> tuple[str, PARConfig]:
    """A method as ``--methods`` names it -> ``(reducer name, its config)``. ``NAME:OPT=VALUE[:...]``
    overrides PAR options for that entry only, so ablations (``par:router=keep``, ``par:beta=1.0``)
    run beside the other methods on the same questions, their intervals paired."""
    name, *overrides = spec.split(":")
    return name, config.with_overrides(overrides) if overrides else config


DART = "dart"  # prunes inside the LLM (models/dart.py): an evaluation method, not a reducer


def dart_settings(spec: str):
    """``dart[:layer=L][:image_pivots=P][:text_pivots=T]`` -> its :class:`DartSettings`."""

    values = {}
    for item in spec.split(":")[1:]:
        name, _, text = item.partition("=")
        if name not in ("layer", "image_pivots", "text_pivots") or not text.isdigit():
            raise ParExportError(f"{spec!r}: DART takes layer=, image_pivots=, text_pivots= (ints)")
        values[name] = int(text)
    return DartSettings(**values)


def is_dart(method: str) -> bool:
    return method.split(":")[0] == DART


def check_methods_and_budgets(methods: list[str], budgets: list) -> None:
    for method in methods:
        if is_dart(method):
            dart_settings(method)
            continue
        if is_downsample(method):
            continue
        name, _ = method_spec(method, PARConfig())  # bad options: PARConfig's message
        reducer_class(name)  # raises with the list of methods
    for budget in budgets:
        if budget != "auto" and (not isinstance(budget, int) or budget < 1):
            raise ParExportError(f"budget must be a positive int or 'auto', got {budget!r}")


def scene_side(base) -> int | None:
    """The square side the procedural scenes are drawn at for ``base``'s model: its tower's fixed
    input size (LLaVA), or ``None`` for a dynamic-resolution tower (Qwen) or tiles (InternVL, whose
    ``image_size`` is a tile's ``[h, w]``), which see the scenes in their several sizes
    (``data.vqa.SCENE_SIZES``)."""
    size = getattr(base.model.config.vision_config, "image_size", None)
    return size if isinstance(size, int) else None


def vqa_batch(base, inputs: ModelInputs, seeds: list[int]):
    """Samples, what the processor gives for their chat prompts (one image each, left padded:
    ``input_ids [B, T]``, ``attention_mask``, the image inputs) and the answer token ids ``[B]``."""
    tok = inputs.tokenizer
    side = scene_side(base)
    samples = [sample(s, sizes=side is None) for s in seeds]
    encoded = inputs.encode([s.question for s in samples], [render(s, side) for s in samples])
    answers = torch.tensor([tok(s.answer, add_special_tokens=False)["input_ids"][0] for s in samples])
    return samples, encoded, answers


def build_eval_artifacts(llava_dir: Path, clip_dir: Path | None, methods: list[str], budgets: list, work: Path,
                         config: PARConfig | None = None) -> dict:
    """Export and build (ONNX Runtime, fp32) what ``evaluate(artifacts=...)`` needs to run every
    method and budget through ONNX graphs: ``{(method, budget): folder}``. One graph with a
    budget input serves all fixed budgets of a method; ``auto`` and ``pool`` (its grid is traced)
    get their own."""

    artifacts: dict = {}
    serial = itertools.count()

    def make(method: str, budget) -> Path:
        name = f"{next(serial)}-{budget}"  # a method spec may hold ':' and '='
        reducer, method_config = method_spec(method, config or PARConfig())
        return export_and_build(llava_dir, work / name, reducer, budget, method_config, clip_dir)

    fixed = [b for b in budgets if b != "auto"]
    if any(is_dart(m) for m in methods):
        raise ParExportError("dart prunes inside the LLM, which runs in PyTorch: it has no graph to build; evaluate it "
                         "with --backend torch")
    if any(is_downsample(m) for m in methods):
        raise ParExportError("downsample feeds the model a smaller image: it has no reducer graph to build; evaluate "
                             "it with --backend torch")
    for method in tqdm(methods, desc="export + build"):
        cls = reducer_class(method_spec(method, PARConfig())[0])
        if fixed and cls.name == "pool":
            artifacts.update({(method, b): make(method, b) for b in fixed})
        elif fixed:
            folder = make(method, max(fixed))
            artifacts.update({(method, b): folder for b in fixed})
        if "auto" in budgets and cls.supports_auto:
            artifacts[(method, "auto")] = make(method, "auto")
    return artifacts


def artifact_budgets(folder: Path, budgets: list) -> tuple[str, dict]:
    """The method of a built artifact and ``{(method, budget): folder}`` for the budgets it serves."""
    meta = read_manifest(folder).metadata
    if meta.budget_input:
        served = [b for b in budgets if b != "auto" and b <= meta.width]
    else:
        served = [b for b in budgets if b == meta.budget]
    if not served:
        raise ParExportError(f"{folder}: a {meta.method} graph with budget {meta.budget!r} (width {meta.width}) "
                         f"serves none of the budgets {budgets}")
    return meta.method, {(meta.method, b): Path(folder) for b in served}


def _artifact_context(pipe, questions: list[str], pixels: torch.Tensor, budget):
    """A built artifact's reduction (ONNX Runtime or TensorRT) of ``pixels`` for ``questions``,
    spliced into their chat prompts: ``inputs_embeds``, ``attention_mask`` and K per image."""
    prompts = [pipe.inputs.chat_prompt(q) for q in questions]
    image_embeds, num_kept = pipe.reduce(pixels.numpy(), prompts, None if budget == "auto" else budget)
    embeds, mask = pipe.splice(prompts, image_embeds, num_kept)
    return embeds, mask, num_kept.tolist()


def _reduce_with_artifact(pipe, base, samples, pixels: torch.Tensor, budget):
    """First-token logits with the reduction of a built artifact: LLaVA-1.5 splices the rows into
    ``inputs_embeds``; an M-RoPE family reduces each scene (at its own size) and places the rows
    at their positions (``pipe.reduced_inputs``)."""
    questions = [s.question for s in samples]
    if pipe.adapter is not None:
        model_inputs, kept = pipe.reduced_inputs([render(s) for s in samples], questions,
                                                 None if budget == "auto" else budget)
        return base.model(**model_inputs).logits[:, -1], kept
    embeds, mask, kept = _artifact_context(pipe, questions, pixels, budget)
    return base.model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1], kept


def _adapters(llava_dir: Path, clip_dir: Path | None, methods: list[str], config: PARConfig,
              pipeline_only: bool = True):
    """The model with PAR, one adapter per method sharing its weights, and the folder's processor.
    ``pipeline_only``: refuse families the LLM pipeline (reduction by a built artifact) does not serve."""
    family = family_for(llava_dir)
    if pipeline_only and not (family.pipeline or family.places_rows):
        raise ParExportError(f"{llava_dir}: eval through a built artifact does not support {family.name} yet (its "
                             f"adapter {family.adapter.__name__} runs in PyTorch: --backend torch)")
    base = family.adapter.from_pretrained(llava_dir, "par", config, clip_path=clip_dir)
    clip = base.query_encoder if base.config.space == "clip" else None
    adapters = {}
    for method in methods:
        if is_dart(method) or is_downsample(method):
            continue  # runs in the LLM itself / through the processor (evaluate)
        name, method_config = method_spec(method, base.config)
        adapters[method] = family.adapter(base.model, name, method_config, base.tokenizer, clip)
    return base, adapters, family.inputs(llava_dir)


@contextlib.contextmanager
def _pipelines(base, artifacts: dict | None, allow_unverified: bool) -> Iterator[dict]:
    """``{(method, budget): VisionLanguagePipeline}``, one pipeline per artifact folder; their sessions
    are released on exit."""

    loaded: dict = {}
    try:
        for folder in dict.fromkeys((artifacts or {}).values()):
            loaded[folder] = VisionLanguagePipeline(folder, base.model, base.tokenizer,
                                                    allow_unverified=allow_unverified)
        yield {key: loaded[folder] for key, folder in (artifacts or {}).items()}
    finally:
        for pipe in loaded.values():
            pipe.close()


@torch.no_grad()
def evaluate(llava_dir: Path, clip_dir: Path | None, methods: list[str], budgets: list, split: str = "test",
             n: int = 2000, batch: int = 50, config: PARConfig | None = None, progress: bool = True,
             keep_examples: int = 4, artifacts: dict | None = None, allow_unverified: bool = False) -> dict:
    """``{"full": Tally, (method, budget): Tally, ...}`` plus a few PAR reductions for heatmaps.

    ``artifacts`` maps ``(method, budget)`` to a ``par-export build`` folder: that method and
    budget then reduce through the built graph (on its backend), not PyTorch; the language model
    answers in PyTorch either way.
    """
    check_methods_and_budgets(methods, budgets)
    config = config or PARConfig()
    base, adapters, inputs = _adapters(llava_dir, clip_dir, methods, config, pipeline_only=bool(artifacts))
    image_id = base.model.config.image_token_id
    if any(is_downsample(m) for m in methods) and scene_side(base) is not None:
        raise ParExportError(f"downsample: {llava_dir}'s processor resizes every image to "
                             f"{scene_side(base)} x {scene_side(base)}, so a smaller image gives no fewer tokens; "
                             "it is a baseline for dynamic-resolution families (Qwen2.5-VL)")
    with _pipelines(base, artifacts, allow_unverified) as pipes:
        tallies: dict = {"full": Tally()}
        examples, full_tokens, text_tokens = [], [], []
        seeds = list(split_seeds(split, n))
        for start in tqdm(range(0, len(seeds), batch), desc=f"eval {split}", disable=not progress):
            samples, encoded, answers = vqa_batch(base, inputs, seeds[start:start + batch])
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            image_inputs = {k: v for k, v in encoded.items() if k in IMAGE_INPUTS}
            tokens = (ids == image_id).sum(dim=1)
            too_large = [b for b in budgets if b != "auto" and b > int(tokens.min())]
            if too_large:
                raise ParExportError(f"--budgets {too_large}: above the {int(tokens.min())} tokens of an image; a "
                                     "larger budget would score the full context under another name")
            questions = [smp.question for smp in samples]
            full_tokens += tokens.tolist()
            text_tokens += (mask.sum(dim=1) - tokens).tolist()
            full = base.model(**encoded).logits[:, -1].argmax(-1)
            kinds = [smp.kind for smp in samples]
            tallies["full"].add(full == answers, full.tolist(), kinds)
            # one tower pass for every method (the authors' forms also read the tower's keys and CLS token)
            tower = {"tower_outputs": True} if any(a.reducer.tower_inputs for a in adapters.values()) else {}
            features = base.vision_features(**image_inputs, **tower)
            for method, adapter in adapters.items():
                for budget in budgets:
                    if budget == "auto" and not adapter.reducer.supports_auto:
                        continue
                    k = budget
                    tally = tallies.setdefault((method, budget), Tally())
                    pipe, reduced = pipes.get((method, budget)), None
                    if pipe is not None:
                        logits, kept = _reduce_with_artifact(pipe, base, samples, image_inputs["pixel_values"], k)
                    else:
                        # the question itself, as the artifact path, run and chat give it (decoding the
                        # chat text would add the template's words: Qwen's "user" / "assistant")
                        reduced = adapter.prepare_inputs(ids, mask, **image_inputs, prompts=questions, budget=k,
                                                         features=features)
                        logits, kept = base.model(**reduced.model_inputs).logits[:, -1], kept_counts(reduced.reduction)
                    predicted = logits.argmax(-1)
                    tally.add(predicted == answers, predicted.tolist(), kinds)
                    tally.kept += kept
                    if (reduced is not None and method == "par" and budget == budgets[0]
                            and not isinstance(reduced.reduction, list) and len(examples) < keep_examples):
                        for b in range(min(keep_examples - len(examples), len(samples))):
                            examples.append((samples[b], reduced.reduction, b, bool(predicted[b] == answers[b])))
            for method in [m for m in methods if is_dart(m)]:
                for budget in [b for b in budgets if b != "auto"]:  # DART keeps a fixed share
                    logits, kept = dart_first_token_logits(base.model, ids, mask, image_inputs["pixel_values"], budget,
                                                           dart_settings(method))
                    tally = tallies.setdefault((method, budget), Tally())
                    predicted = logits.argmax(-1)
                    tally.add(predicted == answers, predicted.tolist(), kinds)
                    tally.kept += kept
            for method in [m for m in methods if is_downsample(m)]:
                for budget in [b for b in budgets if b != "auto"]:
                    smaller = downsampled(inputs, base, samples, budget)
                    predicted = base.model(**smaller).logits[:, -1].argmax(-1)
                    tally = tallies.setdefault((method, budget), Tally())
                    tally.add(predicted == answers, predicted.tolist(), kinds)
                    tally.kept += (smaller["input_ids"] == image_id).sum(dim=1).tolist()
    full_layers = {m: dart_settings(m).layer for m in methods if is_dart(m)}
    return {"tallies": tallies, "examples": examples, "model": base, "text_tokens": round(float(np.mean(text_tokens))),
            "full_tokens": round(float(np.mean(full_tokens))), "full_layers": full_layers}


DOWNSAMPLE = "downsample"  # fewer pixels through the model's own processor: an evaluation method, not a reducer


def is_downsample(method: str) -> bool:
    return method == DOWNSAMPLE


def downsampled(inputs: ModelInputs, base, samples, budget: int) -> dict:
    """The processor's inputs for the samples' scenes with at most ``budget`` visual tokens each:
    the model's own image processor resizes them (``max_pixels`` = ``budget`` merged tokens, the
    aspect ratio kept as its resize rule keeps it), as a user with a smaller image would feed it."""
    processor = inputs.image_processor
    if getattr(processor, "crop_to_patches", False):  # InternVL: fewer tiles, each a fixed number of tokens
        kwargs = tile_limit(budget, base.tokens_per_image)
    else:  # Qwen: fewer pixels
        unit = processor.patch_size * processor.merge_size
        limit = budget * unit * unit  # pixels; the processor's resize floors to whole merged tokens, so N <= budget
        kwargs = {"size": {"shortest_edge": min(processor.size.shortest_edge, limit), "longest_edge": limit}}
    images = [render(s) for s in samples]
    prompts = [inputs.chat_prompt(s.question) for s in samples]
    return dict(inputs.processor(images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt",
                                 images_kwargs=kwargs))


def tile_limit(budget: int, tokens_per_tile: int) -> dict:
    """The tiling processor's options (``GotOcr2ImageProcessor``) that keep an image to at most
    ``budget`` tokens: one tile (the whole image) below two tiles' worth, else a grid of at most
    ``budget // tokens_per_tile - 1`` tiles plus the thumbnail."""
    tiles = budget // tokens_per_tile
    if tiles < 1:
        raise ParExportError(f"downsample: budget {budget} is below one tile's {tokens_per_tile} tokens, the fewest "
                             "this model's processor gives")
    return {"crop_to_patches": False} if tiles < 3 else {"max_patches": tiles - 1}


def result_rows(results: dict) -> list[dict]:
    base = results["model"]
    text_config = base.model.config.text_config
    n = results.get("full_tokens") or base.tokens_per_image
    full = results["tallies"]["full"]
    full_flops = llm_prefill_flops(text_config, n + results["text_tokens"])
    indices = bootstrap_indices(full.total)
    low, high = accuracy_interval(full, indices)
    rows = [{"method": "full", "budget": n, "accuracy": full.accuracy, "accuracy_low": low, "accuracy_high": high,
             "relative": 1.0, "agreement": 1.0, "mean_kept": n, "kept_fraction": 1.0, "llm_prefill_flops": full_flops,
             "flops_relative": 1.0, "n": full.total, **by_kind(full)}]
    for key, tally in results["tallies"].items():
        if key == "full":
            continue
        method, budget = key
        mean_kept = float(np.mean(tally.kept))
        # DART's first layers still see every token
        flops = llm_prefill_flops(text_config, round(mean_kept) + results["text_tokens"], n + results["text_tokens"],
                                  results.get("full_layers", {}).get(method, 0))
        low, high = accuracy_interval(tally, indices)
        rows.append({"method": method, "budget": budget, "accuracy": tally.accuracy, "accuracy_low": low,
                     "accuracy_high": high, "relative": tally.accuracy / max(full.accuracy, 1e-9),
                     "agreement": tally.agreement(full), "mean_kept": mean_kept,
                     "kept_fraction": mean_kept / n, "llm_prefill_flops": flops, "flops_relative": flops / full_flops,
                     "n": tally.total, **by_kind(tally)})
    return rows


def by_kind(tally: Tally) -> dict[str, float]:
    """``{"accuracy_<type>": ...}`` per question type (the procedural split's), for a results row."""
    return {f"accuracy_{kind}": value for kind, value in tally.accuracy_by_kind().items()}


def write_outputs(rows: list[dict], results: dict, out: Path, overwrite: bool = False, inputs=(),
                  sealed=(), data=()) -> list[Path]:
    """results.csv, results.json, accuracy_vs_tokens.png, kept_heatmaps.png in ``out``, written whole
    or not at all (``out`` must not exist unless ``overwrite``, nor be inside a ``sealed`` artifact)."""
    with atomic_folder(out, overwrite, ParExportError, inputs=inputs, sealed=sealed, data=data) as (final, _):
        with open(final / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (final / "results.json").write_text(json.dumps(rows, indent=2))
        full_tokens = results.get("full_tokens") or results["model"].tokens_per_image
        plot_accuracy(rows, final / "accuracy_vs_tokens.png", full_tokens)
        names = ["results.csv", "results.json", "accuracy_vs_tokens.png"]
        if results["examples"]:
            plot_examples(results["examples"], final / "kept_heatmaps.png", results["model"].tokens_per_image)
            names.append("kept_heatmaps.png")
    return [out / name for name in names]


def plot_accuracy(rows: list[dict], path: Path, full_tokens: int) -> None:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    full = next(r for r in rows if r["method"] == "full")
    ax.axhline(full["accuracy"], color="black", linestyle="--", linewidth=1, label=f"full ({full_tokens} tokens)")
    ax.axhspan(full["accuracy_low"], full["accuracy_high"], color="black", alpha=0.08)
    # tab20's strong colours first, then its light ones, and a marker per ten: no two methods alike
    palette = [matplotlib.colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows if r["method"] != "full")):
        points = sorted((r["mean_kept"], r["accuracy"], r["accuracy_low"], r["accuracy_high"])
                        for r in rows if r["method"] == method)
        kept, accuracy, low, high = (np.array(v) for v in zip(*points))
        ax.errorbar(kept, accuracy, yerr=[accuracy - low, high - accuracy], marker="os^D"[i // 10 % 4], capsize=3,
                    color=palette[i % 20], linewidth=2.2 if method == "par" else 1.2, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("kept visual tokens (mean K)")
    ax.set_ylabel("accuracy (95% bootstrap interval)")
    ax.set_title(f"accuracy vs kept tokens (n={full['n']} questions, same for every method)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_examples(examples: list, path: Path, full_tokens: int) -> None:
    side = int(round(full_tokens ** 0.5))
    count = max(len(examples), 1)
    fig = Figure(figsize=(3.2 * count, 3.8))
    axes = fig.subplots(1, count, squeeze=False)
    for ax, (s, reduction, b, correct) in zip(axes[0], examples):
        image = np.asarray(render(s))
        state = kept_token_map(reduction, b, side)
        ax.imshow(image)
        ax.imshow(state, cmap="viridis", alpha=0.45, extent=(0, image.shape[1], image.shape[0], 0),
                  interpolation="nearest", vmin=0, vmax=2)
        ax.set_title(f"{s.question}\n-> {s.answer} ({'ok' if correct else 'wrong'}), K={int(reduction.num_kept[b])}",
                     fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("PAR: kept (yellow), merged (green), dropped (purple)", fontsize=9)
    save_figure(fig, path)


def format_rows(rows: list[dict]) -> str:
    """The eval table: accuracy with its interval, relative to full, agreement with full's answers,
    FLOPs, and accuracy per question type where the questions have types."""
    kinds = [k for k in rows[0] if k.startswith("accuracy_") and k not in ("accuracy_low", "accuracy_high")]
    width = max(10, *(len(r["method"]) for r in rows))
    lines = [f"{'method':<{width}} {'budget':>6} {'mean K':>7} {'acc':>6} {'95% interval':>13} {'rel. to full':>12} "
             f"{'agree':>6} {'LLM FLOPs rel.':>14}" + "".join(f" {k[len('accuracy_'):]:>7}" for k in kinds)]
    for r in rows:
        interval = f"{r['accuracy_low']:.3f}-{r['accuracy_high']:.3f}"
        lines.append(f"{r['method']:<{width}} {str(r['budget']):>6} {r['mean_kept']:>7.1f} {r['accuracy']:>6.3f} "
                     f"{interval:>13} {r['relative']:>12.1%} {r['agreement']:>6.1%} {r['flops_relative']:>14.1%}"
                     + "".join(f" {r[k]:>7.3f}" for k in kinds))
    lines.append(f"intervals: percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples of the same questions for every "
                 f"method (n = {rows[0]['n']}); agree: share of questions answered as the full model answered them"
                 + ("; the last columns: accuracy per question type" if kinds else ""))
    return "\n".join(lines)


@torch.no_grad()
def evaluate_jsonl(llava_dir: Path, clip_dir: Path | None, records_path: Path, images: Path, methods: list[str],
                   budgets: list, config: PARConfig | None = None, batch: int = 8, max_new_tokens: int = 8,
                   progress: bool = True, artifacts: dict | None = None, allow_unverified: bool = False) -> dict:
    """Generation-based accuracy on a LLaVA-style JSONL file (see :mod:`par_export.eval.jsonl`).

    Images and prompts go through the folder's own processor and chat template. ``artifacts``:
    as :func:`evaluate` (that method and budget reduce through the built graph; families the LLM
    pipeline serves).
    """

    check_methods_and_budgets(methods, budgets)
    if any(is_dart(m) for m in methods):
        raise ParExportError("dart prunes inside the LLM for one forward: the procedural split's first-token answers "
                         "(--data FILE.jsonl generates several tokens with a KV cache)")
    records = read_jsonl(records_path)
    base, adapters, inputs = _adapters(llava_dir, clip_dir, methods, config or PARConfig(),
                                       pipeline_only=bool(artifacts))
    with _pipelines(base, artifacts, allow_unverified) as pipes:
        kept, pictures, skipped = load_images(records, images)
        if not kept:
            why = f" (skipped: {dict(skipped)})" if skipped else ""
            raise ParExportError(f"{records_path}: no record to score{why}; nothing was written")
        tok = inputs.tokenizer
        image_id = base.model.config.image_token_id
        tallies: dict = {"full": Tally()}
        full_tokens, text_tokens = [], []
        for start in tqdm(range(0, len(kept), batch), desc="eval jsonl", disable=not progress):
            chunk = kept[start:start + batch]
            encoded = inputs.encode([r.text for r in chunk], pictures[start:start + batch])
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            # what each family's adapter reads besides the ids: pixel_values and its IMAGE_LAYOUT_KEYS entry
            image_inputs = {k: v for k, v in encoded.items() if k in IMAGE_INPUTS}
            length = ids.shape[1]
            generate = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=int(ids[0, 0]))
            full = base.model.generate(**encoded, **generate)
            _score(tallies["full"], tok.batch_decode(full[:, length:], skip_special_tokens=True), chunk, is_correct)
            image_tokens = (ids == image_id).sum(dim=1)
            full_tokens += image_tokens.tolist()
            text_tokens += (mask.sum(dim=1) - image_tokens).tolist()
            features = base.vision_features(**image_inputs)
            sizes = _tokens_per_image(features, base, ids, mask)
            for method, adapter in adapters.items():
                for budget in budgets:
                    if budget == "auto" and not adapter.reducer.supports_auto:
                        continue
                    # a budget above an image's N keeps all of its tokens (N differs per image for some families)
                    k = budget if budget == "auto" else (min(budget, sizes[0]) if sizes[1] is None
                                                         else [min(budget, n) for n in sizes[1]])
                    pipe = pipes.get((method, budget))
                    if pipe is not None:  # the built graph reduces, the model generates from the spliced rows
                        embeds, embeds_mask, kept_now = _artifact_context(pipe, [r.text for r in chunk],
                                                                          image_inputs["pixel_values"], k)
                        new = base.model.generate(inputs_embeds=embeds, attention_mask=embeds_mask, **generate)
                    else:
                        # the question itself, as the artifact path, run and chat give it (decoding the
                        # chat text would add the template's words: Qwen's "user" / "assistant")
                        reduced = adapter.prepare_inputs(ids, mask, **image_inputs, prompts=[r.text for r in chunk],
                                                         budget=k, features=features)
                        out = base.model.generate(**reduced.model_inputs, **generate)
                        new, kept_now = out[:, reduced.model_inputs["input_ids"].shape[1]:], kept_counts(reduced.reduction)
                    tally = tallies.setdefault((method, budget), Tally())
                    _score(tally, tok.batch_decode(new, skip_special_tokens=True), chunk, is_correct)
                    tally.kept += kept_now
    mean_full = round(float(np.mean(full_tokens))) if full_tokens else 0
    return {"tallies": tallies, "examples": [], "model": base, "full_tokens": mean_full,
            "text_tokens": round(float(np.mean(text_tokens))) if text_tokens else 0, "skipped": skipped,
            "records": len(records)}



def _tokens_per_image(features, base, input_ids, attention_mask) -> tuple[int, list[int] | None]:
    """``(N, None)`` for a fixed N per image, else ``(0, [N_i])``: from the per-image features, or
    (InternVL, whose features are per tile) from each image's tiles in the prompt's runs."""
    if isinstance(features, list):
        return 0, [int(f[0].shape[0]) for f in features]
    if hasattr(base, "tiles_per_image"):
        return 0, [t * base.tokens_per_image for t in base.tiles_per_image(input_ids, attention_mask)]
    return base.tokens_per_image, None


def kept_counts(reduction) -> list[int]:
    """K per image from a reduction: one ``ReductionOutput`` for a batch, or one per image."""
    if isinstance(reduction, list):
        return [int(out.num_kept[0]) for out in reduction]
    return reduction.num_kept.tolist()


def _score(tally: Tally, predictions: list[str], records, is_correct) -> None:
    tally.add([is_correct(p, r.answer) for p, r in zip(predictions, records)], predictions)
