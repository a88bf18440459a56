"""Every exported graph is checked before it is reported done: ONNX checker, shape
inference, then ONNX Runtime against the PyTorch module it was traced from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

# fp32: the bounds. fp16: a looser bound on the embeddings (about 3 fp16 ulps
# at magnitude 1 after a deep tower) and on the kept indices (rank flips of nearly
# tied scores move tokens in and out).
# bf16 keeps 8 mantissa bits (twice fp16's bound); int8 weights quantize per tensor, so
# its bound is relative to the largest reference output.
TOLERANCES = {
    # fp32: 1e-4 absolute, or 1e-4 of the largest output: summation order alone moves a deep tower's
    # outputs, and merged rows (softmax-weighted means) move with their weights (Qwen2.5-VL-3B's
    # 32 blocks: 3.5e-4 on outputs up to 6.9 between ONNX Runtime and torch, kept sets equal).
    "fp32": {"max_abs_error": 1e-4, "max_rel_error": 1e-4, "index_agreement": 0.99},
    # fp16/bf16 rounding is relative (11 / 8 significant bits), so their bound scales with the
    # largest reference output: the demo's trained projector reaches |x| ~ 60, a random tiny one's 3e-2.
    "fp16": {"max_rel_error": 0.05, "index_agreement": 0.90},
    "bf16": {"max_rel_error": 0.1, "index_agreement": 0.90},
    "int8": {"max_rel_error": 0.25, "index_agreement": 0.80},
    "fp8": {"max_rel_error": 0.25, "index_agreement": 0.80},
}


def check_graph(path: Path) -> dict:
    """Full ``onnx.checker`` check and shape inference of a file (external data allowed)."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")))
    path.with_suffix(".inferred.onnx").unlink()
    return {"checker": "ok", "shape_inference": "ok"}


@dataclass
class Case:
    """One parity case: a named feed for ONNX Runtime and the same inputs for torch."""

    name: str
    feed: dict[str, np.ndarray]


def compare_outputs(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
    """Error of ``outputs`` against ``reference`` (vision graph outputs, or a query embedding)."""
    name = "image_embeds" if "image_embeds" in reference else "query_embeds"
    ref = reference[name].astype(np.float32)
    diff = np.abs(outputs[name].astype(np.float32) - ref)
    result = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
              "reference_max_abs": float(np.abs(ref).max())}
    if "keep_index" in reference:
        valid = np.arange(reference["keep_index"].shape[1])[None, :] < reference["num_kept"][:, None]
        same = outputs["keep_index"] == reference["keep_index"]
        result["index_agreement"] = float(same[valid].mean()) if valid.any() else 1.0
        result["num_kept_equal"] = bool((outputs["num_kept"] == reference["num_kept"]).all())
        result["num_kept"] = outputs["num_kept"].tolist()
    return result


def compare_with_torch(module: torch.nn.Module, path, cases: list[Case], output_names: list[str],
                       layout=None) -> list[dict]:
    """The exported graph at ``path`` (ONNX Runtime) against the PyTorch ``module`` it came from, on
    every case, run by Polygraphy's ``Comparator``: ``{case, max_abs_error, ...}`` per case.

    The reference runs in fp32 whatever the graph's precision, so fp16 error is the real error;
    inputs a graph does not declare (a prompt-agnostic reducer's ``query_embeds``) are not fed to it.
    ``layout``: maps both sides' outputs to the ``vision_par`` names first (the Edge-LLM graph's).
    """
    from polygraphy.comparator import Comparator

    from par_export.backends.base import quiet_polygraphy
    from par_export.backends.onnxruntime import OnnxRuntimeRunner
    from par_export.backends.torch import TorchRunner, feed_metadata

    runners = [OnnxRuntimeRunner(path, name="onnxruntime"),
               TorchRunner(module, output_names, feed_metadata(cases[0].feed), name="torch")]
    with quiet_polygraphy():
        results = Comparator.run(runners, data_loader=[case.feed for case in cases])
    graph, reference = (iterations for _, iterations in results.items())
    layout = layout or dict
    return [{"case": case.name, **compare_outputs(layout(ref), layout(out))}
            for case, out, ref in zip(cases, graph, reference)]


def error_limit(precision: str, scale: float) -> float:
    """The largest max-abs error :data:`TOLERANCES` allows for outputs up to ``scale`` in magnitude."""
    bounds = TOLERANCES[precision]
    return max(bounds.get("max_abs_error", 0.0), bounds.get("max_rel_error", 0.0) * scale)


def summarize(cases: list[dict], precision: str, needs_indices: bool) -> dict:
    """Worst case figures and the verdict against :data:`TOLERANCES`."""
    bounds = TOLERANCES[precision]
    worst_error = max(c["max_abs_error"] for c in cases)
    scale = max(c["reference_max_abs"] for c in cases)
    limit = error_limit(precision, scale)
    passed = worst_error <= limit
    summary = {"max_abs_error": worst_error, "reference_max_abs": scale, "tolerance": bounds, "error_limit": limit}
    if needs_indices:
        worst_agreement = min(c["index_agreement"] for c in cases)
        summary["min_index_agreement"] = worst_agreement
        passed = passed and worst_agreement >= bounds["index_agreement"] and all(c["num_kept_equal"] for c in cases)
    summary["passed"] = passed
    return summary
