"""Polygraphy data loader for ``vision_par.onnx`` (and ``query_encoder.onnx``).

    polygraphy run out/vision_par.onnx --onnxrt --data-loader-script tools/polygraphy_data_loader.py

Polygraphy calls :func:`load_data`; the model path is read from the command line
and the shapes from the graph and its ``par.*`` metadata, so the feeds are valid:
pixel values, query embeddings (one all-zero row: the no-prompt fallback) and a
budget within ``[1, width]``, at batch 1 and 2 (or token ids for the query encoder).
"""

from __future__ import annotations

import sys

import numpy as np

from par_export.export.metadata import load_graph_only, metadata_from_model

BATCHES = (1, 2)


def _model_path() -> str:
    paths = [arg for arg in sys.argv[1:] if arg.endswith(".onnx")]
    if not paths:
        raise SystemExit("polygraphy_data_loader: no .onnx model on the command line")
    return paths[0]


def _dtype(model, name: str):
    import onnx

    value = next(v for v in model.graph.input if v.name == name)
    return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)


def load_data():
    model = load_graph_only(_model_path())
    meta = metadata_from_model(model)
    names = {v.name for v in model.graph.input}
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        if "input_ids" in names:  # query_encoder.onnx
            ids = rng.integers(5, 50, size=(batch, 8)).astype(np.int64)
            yield {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            continue
        size = meta["image_size"]
        feed = {"pixel_values": rng.standard_normal((batch, 3, size, size)).astype(_dtype(model, "pixel_values"))}
        if "query_embeds" in names:
            query = rng.standard_normal((batch, meta["query_dim"])).astype(_dtype(model, "query_embeds"))
            query[-1] = 0 if batch > 1 else query[-1]
            feed["query_embeds"] = query
        if "budget" in names:
            feed["budget"] = np.array(min(meta["budget"], meta["width"]), dtype=np.int64)
        yield feed
