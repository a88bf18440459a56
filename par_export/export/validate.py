"""Every exported graph is checked before it is reported done: ONNX checker, shape
inference, then ONNX Runtime against the PyTorch module it was traced from."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from polygraphy.comparator import Comparator

from par_export.backends.base import quiet_polygraphy
from par_export.backends.onnxruntime import OnnxRuntimeRunner
from par_export.backends.torch import TorchRunner, feed_metadata
from par_export.models.graphs import reference_scores
from par_export.models.onnx_config import Case

logger = logging.getLogger(__name__)

# fp32: the bounds. fp16: a looser bound on the embeddings (about 3 fp16 ulps
# at magnitude 1 after a deep tower) and on the kept indices (rank flips of nearly
# tied scores move tokens in and out).
# bf16 keeps 8 mantissa bits (twice fp16's bound); int8 weights quantize per tensor, so
# its bound is relative to the largest reference output.
TOLERANCES = {
    # fp32: 1e-4 absolute, or 1e-4 of the largest output: summation order alone moves a deep tower's
    # outputs, and merged rows (softmax-weighted means) move with their weights (Qwen2.5-VL-3B's
    # 32 blocks: 3.5e-4 on outputs up to 6.9 between ONNX Runtime and torch, kept sets equal).
    "fp32": {"max_abs_error": 1e-4, "max_rel_error": 1e-4, "index_agreement": 0.99, "tie": 1e-4,
             "min_cosine": 0.9999, "mean_cosine": 0.99999},
    # fp16/bf16 rounding is relative (11 / 8 significant bits), so their bound scales with the
    # largest reference output: the demo's trained projector reaches |x| ~ 60, a random tiny one's 3e-2.
    "fp16": {"max_rel_error": 0.05, "index_agreement": 0.90, "tie": 0.01, "min_cosine": 0.99, "mean_cosine": 0.999},
    "bf16": {"max_rel_error": 0.1, "index_agreement": 0.90, "tie": 0.02, "min_cosine": 0.98, "mean_cosine": 0.998},
    "int8": {"max_rel_error": 0.25, "index_agreement": 0.80, "tie": 0.05, "min_cosine": 0.9, "mean_cosine": 0.99},
    "fp8": {"max_rel_error": 0.25, "index_agreement": 0.80, "tie": 0.05, "min_cosine": 0.9, "mean_cosine": 0.99},
}
"""Per precision, for the tokens both sides kept: a row is *off* when its max abs error exceeds
``max_abs_error`` / ``max_rel_error`` (relative to the largest reference output) or its cosine to the
reference row (the end metric: what the LLM receives) is below ``min_cosine``; the mean cosine must
reach ``mean_cosine``. ``index_agreement`` is the least share of the reference's kept tokens the graph
must keep (near-ties not counted) and, the same way, of shared rows that must not be off: a
near-tie in the router (a token a hair closer to another center) moves that token's weight between
two merged rows, which the graph's outputs cannot tell from an error on one row, so a few such rows
are allowed and a systematic error (every row) is not. ``tie`` is how close, relative to the
reference's score range, a token's score must be to the kept/dropped boundary for a disagreement on
it to count as a near-tie."""


def check_graph(path: Path) -> dict:
    """Full ``onnx.checker`` check and shape inference of a file (external data allowed)."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")))
    path.with_suffix(".inferred.onnx").unlink()
    return {"checker": "ok", "shape_inference": "ok"}


def compare_outputs(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], tie: float = 0.0) -> dict:
    """Error of ``outputs`` against ``reference`` (vision graph outputs, or a query embedding).

    Vision outputs add :func:`kept_token_agreement`; ``tie`` is the precision's near-tie
    tolerance (:data:`TOLERANCES`), used where the reference carries its ``scores [B, N]``.
    """
    if "image_embeds" in reference:
        ref, out = token_rows(reference), token_rows(outputs)
    else:
        ref, out = (o["query_embeds"].astype(np.float32) for o in (reference, outputs))
    diff = np.abs(out - ref)
    result = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
              "reference_max_abs": float(np.abs(ref).max())}
    if "keep_index" in reference:
        result.update(kept_token_agreement(reference, outputs, tie))
    return result


def token_rows(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """``[B, W, D']`` float32: what the LLM receives for each kept slot, ``image_embeds`` and, where
    the graph has them (Qwen3-VL), the slot's row of every DeepStack level beside it
    (``deepstack_embeds [L, B, W, D]``), so that a level's error counts as an error of its row."""
    rows = outputs["image_embeds"].astype(np.float32)
    if "deepstack_embeds" in outputs:
        rows = np.concatenate([rows, *outputs["deepstack_embeds"].astype(np.float32)], axis=-1)
    return rows


def kept_token_agreement(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], tie: float) -> dict:
    """Kept tokens compared per image as sets, and the rows of the tokens both kept matched by index.

    Kept indices are ascending, so one swapped token shifts every later slot: comparing slot by
    slot would count one near-tie as many errors. A token only one side kept is a near-tie when
    its reference score (``reference["scores"] [B, N]``, what the reducer ranked by) lies within
    ``tie`` x the reference's score range of the kept/dropped boundary: the lowest kept score for
    a token the graph added, the highest dropped score for one it lost. A swap is real when either
    of its tokens is. Without reference scores every disagreement counts as real.

    Returns ``index_agreement`` (share of the reference's kept tokens the graph kept),
    ``real_index_agreement`` (disagreements that are near-ties not counted), ``tied_tokens``
    (``None`` without scores), ``shared_tokens`` and, over their rows, ``row_errors`` (max abs error
    per row), ``cosines``, ``shared_max_abs_error``, ``min_cosine`` and ``mean_cosine``;
    ``num_kept_equal`` and ``num_kept``.
    """
    ref_rows, out_rows = token_rows(reference), token_rows(outputs)
    scores = reference.get("scores")
    kept = shared = real = tied = 0
    row_errors, cosines = [], []
    for b in range(ref_rows.shape[0]):
        ref_index = reference["keep_index"][b, :int(reference["num_kept"][b])]
        out_index = outputs["keep_index"][b, :int(outputs["num_kept"][b])]
        _, ref_pos, out_pos = np.intersect1d(ref_index, out_index, assume_unique=True, return_indices=True)
        lost, gained = np.setdiff1d(ref_index, out_index), np.setdiff1d(out_index, ref_index)
        kept, shared = kept + len(ref_index), shared + len(ref_pos)
        swaps = max(len(lost), len(gained))
        if scores is None or swaps == 0:
            real += swaps
        else:
            s = scores[b].astype(np.float64)
            finite = np.isfinite(s)
            tolerance = tie * float(s[finite].max() - s[finite].min())
            dropped = np.ones(len(s), bool)
            dropped[ref_index] = False
            highest_dropped = s[dropped & finite].max() if (dropped & finite).any() else -np.inf
            lowest_kept = s[ref_index].min() if len(ref_index) else np.inf
            real_lost = int((s[lost] > highest_dropped + tolerance).sum())
            real_gained = int((s[gained] < lowest_kept - tolerance).sum())
            real += max(real_lost, real_gained)
            tied += swaps - max(real_lost, real_gained)
        a, r = out_rows[b, out_pos], ref_rows[b, ref_pos]
        row_errors.append(np.abs(a - r).max(-1))
        norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(r, axis=-1)
        cosines.append(np.where(norms > 0, (a * r).sum(-1) / np.maximum(norms, 1e-30),
                                (np.abs(a).max(-1) == np.abs(r).max(-1)).astype(np.float32)))  # both zero: equal
    row_errors, cosines = np.concatenate(row_errors), np.concatenate(cosines)
    return {"index_agreement": shared / kept if kept else 1.0,
            "real_index_agreement": 1.0 - real / kept if kept else 1.0,
            "tied_tokens": tied if scores is not None else None,
            "shared_tokens": shared, "row_errors": row_errors.tolist(), "cosines": cosines.tolist(),
            "shared_max_abs_error": float(row_errors.max()) if shared else 0.0,
            "min_cosine": float(cosines.min()) if shared else 1.0,
            "mean_cosine": float(cosines.mean()) if shared else 1.0,
            "num_kept_equal": bool((outputs["num_kept"] == reference["num_kept"]).all()),
            "num_kept": outputs["num_kept"].tolist()}


def case_verdict(figures: dict, limit: float, bounds: dict) -> dict[str, bool]:
    """Which outputs of one case are within ``bounds`` (a :data:`TOLERANCES` entry; ``limit``: the
    max-abs bound from :func:`error_limit`). Vision figures come :func:`condensed` (their
    ``off_rows`` counted against the same ``limit`` and ``bounds``)."""
    if "real_index_agreement" not in figures:
        return {"embeddings": figures["max_abs_error"] <= limit}
    return {"embeddings": figures["off_rows"] <= (1.0 - bounds["index_agreement"]) * figures["shared_tokens"]
            and figures["mean_cosine"] >= bounds["mean_cosine"],
            "keep_index": figures["real_index_agreement"] >= bounds["index_agreement"],
            "num_kept": figures["num_kept_equal"]}


def off_rows(figures: dict, limit: float, bounds: dict) -> int:
    """How many shared kept tokens' rows are off: max abs error above ``limit`` or cosine below
    ``bounds["min_cosine"]``."""
    errors, cosines = np.asarray(figures["row_errors"]), np.asarray(figures["cosines"])
    return int(((errors > limit) | (cosines < bounds["min_cosine"])).sum())


def compare_with_torch(module: torch.nn.Module, path, cases: list[Case], output_names: list[str],
                       layout=None, precision: str = "fp32") -> list[dict]:
    """The exported graph at ``path`` (ONNX Runtime) against the PyTorch ``module`` it came from, on
    every case, run by Polygraphy's ``Comparator``: ``{case, max_abs_error, ...}`` per case.

    The reference runs in fp32 whatever the graph's precision, so fp16 error is the real error;
    inputs a graph does not declare (a prompt-agnostic reducer's ``query_embeds``) are not fed to it.
    A :class:`VisionParGraph` reference also returns its reducer's ``scores``, so that near-ties at
    ``precision``'s tolerance are told from errors (:func:`kept_token_agreement`).
    ``layout``: maps both sides' outputs to the ``vision_par`` names first (the Edge-LLM graph's).
    """

    with reference_scores(module, output_names) as reference_outputs, quiet_polygraphy():
        runners = [OnnxRuntimeRunner(path, name="onnxruntime"),
                   TorchRunner(module, reference_outputs, feed_metadata(cases[0].feed), name="torch")]
        results = Comparator.run(runners, data_loader=[case.feed for case in cases])
    graph, reference = (iterations for _, iterations in results.items())
    layout = layout or dict
    tie = TOLERANCES[precision]["tie"]
    return [{"case": case.name, **compare_outputs(layout(ref), layout(out), tie)}
            for case, out, ref in zip(cases, graph, reference)]


def error_limit(precision: str, scale: float) -> float:
    """The largest max-abs error :data:`TOLERANCES` allows for outputs up to ``scale`` in magnitude."""
    bounds = TOLERANCES[precision]
    return max(bounds.get("max_abs_error", 0.0), bounds.get("max_rel_error", 0.0) * scale)


def summarize(cases: list[dict], precision: str, needs_indices: bool) -> dict:
    """Worst case figures and the verdict (:func:`case_verdict`) against :data:`TOLERANCES`; vision
    ``cases`` are replaced in place by their :func:`condensed` form (what the report keeps)."""
    bounds = TOLERANCES[precision]
    worst_error = max(c["max_abs_error"] for c in cases)
    scale = max(c["reference_max_abs"] for c in cases)
    limit = error_limit(precision, scale)
    summary = {"max_abs_error": worst_error, "reference_max_abs": scale, "tolerance": bounds, "error_limit": limit}
    if needs_indices:
        summary["min_index_agreement"] = min(c["index_agreement"] for c in cases)
        summary["min_real_index_agreement"] = min(c["real_index_agreement"] for c in cases)
        summary["shared_max_abs_error"] = max(c["shared_max_abs_error"] for c in cases)
        summary["min_cosine"] = min(c["min_cosine"] for c in cases)
        ties = [c["tied_tokens"] for c in cases]
        summary["tied_tokens"] = None if None in ties else sum(ties)
        cases[:] = [condensed(c, limit, bounds) for c in cases]
        summary["off_rows"] = sum(c["off_rows"] for c in cases)
    for case in cases:
        case["passed"] = all(case_verdict(case, limit, bounds).values())
    summary["passed"] = all(c["passed"] for c in cases)
    return summary


def format_rows(rows: list[dict], first: str = "reference") -> str:
    """The table of a verification or an export validation (one row per case and reference): errors over the kept tokens both sides share (rows off the bound,
    mean and min cosine), kept-set agreement with and without near-ties, and each case's verdict.
    ``first``: the heading of the first column (each row's ``reference``: what it was compared with,
    or the graph)."""
    width = max([9] + [len(r.get("case", "")) for r in rows])
    lines = [f"{first:<10} {'case':<{width}} {'max abs err':>11} {'|ref| max':>9} {'rows off':>8} "
             f"{'mean cos':>8} {'min cos':>7} {'kept agree':>10} {'ties':>4} {'w/o ties':>8} {'K equal':>7} "
             f"{'verdict':>7}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['reference']:<10} skipped: {r['skipped']}")
            continue
        if "shared_tokens" not in r:  # a query encoder: one embedding, no kept tokens
            lines.append(f"{r['reference']:<10} {r['case']:<{width}} {r['max_abs_error']:>11.2e} "
                         f"{r['reference_max_abs']:>9.2e} {'':>8} {'':>8} {'':>7} {'':>10} {'':>4} {'':>8} {'':>7} "
                         f"{'ok' if r['passed'] else 'FAILED':>7}")
            continue
        ties = "?" if r["tied_tokens"] is None else str(r["tied_tokens"])
        lines.append(f"{r['reference']:<10} {r['case']:<{width}} {r['shared_max_abs_error']:>11.2e} "
                     f"{r['reference_max_abs']:>9.2e} {r['off_rows']:>3}/{r['shared_tokens']:<4} "
                     f"{r['mean_cosine']:>8.5f} {r['min_cosine']:>7.4f} {r['index_agreement']:>10.2%} {ties:>4} "
                     f"{r['real_index_agreement']:>8.2%} {str(r['num_kept_equal']):>7} "
                     f"{'ok' if r['passed'] else 'FAILED':>7}")
    lines.append("over the kept tokens both sides share: max abs err, rows off the precision's bound (error or "
                 "cosine), cosines; ties: kept tokens whose reference scores are within the precision's tolerance "
                 "of the kept/dropped boundary (? = no reference scores), w/o ties: agreement not counting them")
    return "\n".join(lines)


def validation_failure(graphs: dict, error: type[Exception]) -> Exception:
    """The error of an export whose validation failed: its whole report (``graphs``: per graph,
    :func:`summarize` figures and cases) written to a file in the temp folder, the per-case table
    logged, and one line naming the failed cases and that file (nothing goes into ``--out``)."""
    fd, path = tempfile.mkstemp(prefix="par-export-validation-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(graphs, f, indent=1, default=str)
    rows = [{"reference": name, **case} for name, graph in graphs.items() for case in graph["cases"]]
    logger.error("export validation (ONNX Runtime vs PyTorch):\n%s", format_rows(rows, first="graph"))
    failed = [f"{r['reference']} {r['case']}" for r in rows if not r["passed"]]
    return error(f"validation failed for {len(failed)} of {len(rows)} cases ({'; '.join(failed[:3])}"
                 f"{'; ...' if len(failed) > 3 else ''}); the whole report: {path}; nothing was written")


def condensed(figures: dict, limit: float, bounds: dict) -> dict:
    """``figures`` for a report: the per-row lists replaced by the count of :func:`off_rows`."""
    kept = {k: v for k, v in figures.items() if k not in ("row_errors", "cosines")}
    return {**kept, "off_rows": off_rows(figures, limit, bounds)}
