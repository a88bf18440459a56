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
TOLERANCES = {
    "fp32": {"max_abs_error": 1e-4, "index_agreement": 0.99},
    "fp16": {"max_abs_error": 5e-2, "index_agreement": 0.90},
}


def check_graph(path: Path) -> dict:
    """Full ``onnx.checker`` check and shape inference of a file (external data allowed)."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")))
    path.with_suffix(".inferred.onnx").unlink()
    return {"checker": "ok", "shape_inference": "ok"}


def ort_session(path: Path):
    """ONNX Runtime CPU session; graphs with ``par::TopKCluster`` get its Python CPU op."""
    import onnxruntime as ort

    from par_export.export.ort_custom_op import custom_op_session, uses_custom_op

    model = onnx.load(str(path))
    if uses_custom_op(model):
        return custom_op_session(path, model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Case:
    """One parity case: a named feed for ONNX Runtime and the same inputs for torch."""

    name: str
    feed: dict[str, np.ndarray]


def compare_vision(module: torch.nn.Module, session, case: Case) -> dict:
    """ORT vs torch on one case: max abs error of the embeddings, kept-index agreement."""
    # The reference runs in fp32 whatever the graph's precision, so fp16 error is the real error.
    inputs = [torch.from_numpy(case.feed[name]).float() for name in ("pixel_values", "query_embeds")]
    if "budget" in case.feed:
        inputs.append(torch.from_numpy(case.feed["budget"]))
    with torch.no_grad():
        ref_embeds, ref_kept, ref_index = (t.numpy() for t in module(*inputs))
    # Prompt-agnostic reducers never read query_embeds, so the exporter drops that input.
    declared = {i.name for i in session.get_inputs()}
    feed = {name: value for name, value in case.feed.items() if name in declared}
    embeds, kept, index = session.run(["image_embeds", "num_kept", "keep_index"], feed)
    valid = np.arange(ref_index.shape[1])[None, :] < ref_kept[:, None]
    agreement = float((index == ref_index)[valid].mean()) if valid.any() else 1.0
    return {
        "case": case.name,
        "max_abs_error": float(np.abs(embeds.astype(np.float32) - ref_embeds.astype(np.float32)).max()),
        "reference_max_abs": float(np.abs(ref_embeds).max()),
        "index_agreement": agreement,
        "num_kept_equal": bool((kept == ref_kept).all()),
        "num_kept": kept.tolist(),
    }


def compare_query(module: torch.nn.Module, session, case: Case) -> dict:
    with torch.no_grad():
        ref = module(*(torch.from_numpy(case.feed[n]) for n in ("input_ids", "attention_mask"))).numpy()
    (out,) = session.run(["query_embeds"], case.feed)
    return {"case": case.name, "max_abs_error": float(np.abs(out.astype(np.float32) - ref.astype(np.float32)).max()),
            "reference_max_abs": float(np.abs(ref).max())}


def summarize(cases: list[dict], precision: str, needs_indices: bool) -> dict:
    """Worst case figures and the verdict against :data:`TOLERANCES`."""
    bounds = TOLERANCES[precision]
    worst_error = max(c["max_abs_error"] for c in cases)
    passed = worst_error <= bounds["max_abs_error"]
    summary = {"max_abs_error": worst_error, "reference_max_abs": max(c["reference_max_abs"] for c in cases),
               "tolerance": bounds}
    if needs_indices:
        worst_agreement = min(c["index_agreement"] for c in cases)
        summary["min_index_agreement"] = worst_agreement
        passed = passed and worst_agreement >= bounds["index_agreement"] and all(c["num_kept_equal"] for c in cases)
    summary["passed"] = passed
    return summary
