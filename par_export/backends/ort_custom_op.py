"""``par::TopKCluster`` on ONNX Runtime's CPU: an onnxruntime-extensions Python op that
runs the reducer's own :func:`topk_cluster`, so the custom-op graph runs without a GPU.

onnxruntime-extensions serves Python ops in its own domain, so
:func:`custom_op_session` loads the graph with ``par`` nodes moved there (in memory;
the file keeps domain ``par`` for TensorRT). fp32 tokens only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from par_export.reduce.topk_cluster import DOMAIN, OP_TYPE, topk_cluster

_registered = False
CLUSTERED_OP_TYPE = f"{OP_TYPE}Clustered"  # the in-memory name of a node with the 5th input


def register_topk_cluster() -> None:
    """Register the Python implementation with onnxruntime-extensions (once per process)."""
    global _registered
    if _registered:
        return
    try:
        # optional: onnxruntime-extensions loads onnxruntime (par-export[cpu] or [gpu])
        from onnxruntime_extensions import PyCustomOpDef, onnx_op  # noqa: PLC0415
    except ImportError as err:
        raise RuntimeError(
            "running a graph with par::TopKCluster on ONNX Runtime needs onnxruntime-extensions "
            "(pip install onnxruntime-extensions)"
        ) from err

    attrs = {"k_max": PyCustomOpDef.dt_int64, "gamma": PyCustomOpDef.dt_float, "tau": PyCustomOpDef.dt_float,
             "router": PyCustomOpDef.dt_string, "plugin_version": PyCustomOpDef.dt_string,
             "plugin_namespace": PyCustomOpDef.dt_string}
    outputs = [PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int64]
    four = [PyCustomOpDef.dt_float, PyCustomOpDef.dt_float, PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64]

    def run(tokens, scores, relevance, num_kept, cluster_tokens, k_max, gamma, tau, router):
        with torch.no_grad():
            outputs = topk_cluster(torch.from_numpy(np.ascontiguousarray(tokens)), torch.from_numpy(scores),
                                   torch.from_numpy(relevance), torch.from_numpy(num_kept), int(k_max),
                                   float(gamma), float(tau), router,
                                   cluster_tokens=None if cluster_tokens is None
                                   else torch.from_numpy(np.ascontiguousarray(cluster_tokens)))
        return tuple(o.numpy() for o in outputs)

    @onnx_op(op_type=OP_TYPE, inputs=four, outputs=outputs, attrs=attrs)
    def _topk_cluster(tokens, scores, relevance, num_kept, k_max=192, gamma=1.0, tau=1.0, router="merge", **_):
        return run(tokens, scores, relevance, num_kept, None, k_max, gamma, tau, router)

    # onnxruntime-extensions binds a Python op's inputs by count: the 5-input form (cluster_tokens)
    # is registered under its own name, which custom_op_session gives such nodes in memory
    @onnx_op(op_type=CLUSTERED_OP_TYPE, inputs=[*four, PyCustomOpDef.dt_float], outputs=outputs, attrs=attrs)
    def _topk_cluster_clustered(tokens, scores, relevance, num_kept, cluster_tokens, k_max=192, gamma=1.0, tau=1.0,
                                router="merge", **_):
        return run(tokens, scores, relevance, num_kept, cluster_tokens, k_max, gamma, tau, router)

    _registered = True


def uses_custom_op(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in model.graph.node)


def custom_op_session(path: str | Path, model: onnx.ModelProto | None = None):
    """An ONNX Runtime CPU session for a graph holding ``par::TopKCluster`` nodes."""
    # optional: onnxruntime (par-export[cpu] or [gpu])
    import onnxruntime as ort  # noqa: PLC0415
    from onnxruntime_extensions import get_library_path  # noqa: PLC0415
    from onnxruntime_extensions._ocos import default_opset_domain  # noqa: PLC0415

    register_topk_cluster()
    model = model if model is not None else onnx.load(str(path))
    target = default_opset_domain()
    for node in model.graph.node:
        if node.domain == DOMAIN:
            node.domain = target
            if len(node.input) == 5 and node.input[4]:
                node.op_type = CLUSTERED_OP_TYPE
    kept = [o for o in model.opset_import if o.domain not in (DOMAIN, target)]
    del model.opset_import[:]
    model.opset_import.extend(kept + [onnx.helper.make_opsetid(target, 1)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
