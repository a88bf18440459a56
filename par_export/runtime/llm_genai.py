"""The LLM of a LLaVA model as an onnxruntime-genai model folder that takes PAR's reduced rows.

onnxruntime-genai's decoder-only builder with ``exclude_embeds`` fails on plain decoder
configs ("Model input was not found: input_ids", microsoft/onnxruntime-genai #1163, #1325,
#1644), but its phi3v-style three-model pipeline takes any graphs with the right names:

- ``vision.onnx``: ``pixel_values [images, K, D]`` -> ``image_features [images * K, D]``. Here
  a reshape: what we hand it as ``pixel_values`` are the rows the vision/PAR artifact already
  reduced (on ONNX Runtime or TensorRT), so K can change per image;
- ``embedding.onnx``: ``input_ids [B, T]`` int32 + ``image_features [rows, D]`` ->
  ``inputs_embeds [B, T, D]``: the token embeddings with the image rows, in order, at the
  positions holding the LLM's ``image_token_id`` (none during decoding, when ``rows == 0``);
- ``llm.onnx``: the decoder with KV cache of :func:`~par_export.runtime.llm_onnx.export_llm`.

onnxruntime-genai then owns prefill, KV cache and greedy search (0.18, the PyPI version
targeted). Its multimodal generator takes one prompt at a time here, so a batch runs as a
loop of generators.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from par_export.files import atomic_output
from par_export.runtime.llm_onnx import PAST, PRESENT, export_llm


class _SpliceEmbeddings(torch.nn.Module):
    def __init__(self, embed_tokens: torch.nn.Module, image_token_id: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.image_token_id = image_token_id

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()
        is_image = (ids == self.image_token_id) & (image_features.shape[0] > 0)
        text = self.embed_tokens(torch.where(is_image, torch.zeros_like(ids), ids))
        rows = torch.cat([image_features.to(text.dtype), text.new_zeros(1, text.shape[-1])])
        order = torch.cumsum(is_image.flatten().long(), 0).view_as(ids) - 1  # k-th image position -> row k
        index = torch.where(is_image, order, torch.full_like(ids, image_features.shape[0]))
        return torch.where(is_image.unsqueeze(-1), rows[index], text)


def _passthrough_vision(hidden: int):
    shape = numpy_helper.from_array(np.array([-1, hidden], np.int64), "rows_by_hidden")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixel_values", "rows_by_hidden"], ["image_features"])], "reduced_rows",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["images", "rows", hidden]),
         helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["images", 2])],
        [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["total_rows", hidden])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def genai_config(model, context_length: int | None = None) -> dict:
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    decoder = {
        "filename": "llm.onnx", "hidden_size": text.hidden_size, "head_size": head_dim,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "inputs": {"inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask",
                   "position_ids": "position_ids", "past_key_names": PAST.replace("%s", "key"),
                   "past_value_names": PAST.replace("%s", "value")},
        "outputs": {"logits": "logits", "present_key_names": PRESENT.replace("%s", "key"),
                    "present_value_names": PRESENT.replace("%s", "value")},
    }
    return {
        "model": {
            "type": "phi3v", "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id if text.pad_token_id is not None else 0,
            "vocab_size": text.vocab_size, "context_length": context_length or text.max_position_embeddings,
            "decoder": decoder,
            "embedding": {"filename": "embedding.onnx",
                          "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                          "outputs": {"inputs_embeds": "inputs_embeds"}},
            "vision": {"filename": "vision.onnx",
                       "inputs": {"pixel_values": "pixel_values", "image_sizes": "image_sizes"},
                       "outputs": {"image_features": "image_features"}},
        },
        "search": {"do_sample": False, "num_beams": 1, "top_k": 1, "max_length": context_length or
                   text.max_position_embeddings, "past_present_share_buffer": False},
    }


def export_genai(model, tokenizer, folder: str | Path, opset: int = 17) -> Path:
    """Write an onnxruntime-genai folder (``genai_config.json``, the three graphs, tokenizer)
    for a ``LlavaForConditionalGeneration``."""

    folder = Path(folder)
    export_llm(model, folder, opset)
    splice = _SpliceEmbeddings(model.get_input_embeddings(), model.config.image_token_id).eval()
    example = (torch.tensor([[1, model.config.image_token_id, 2]], dtype=torch.int32),
               torch.randn(1, model.config.text_config.hidden_size))
    with warnings.catch_warnings(), torch.no_grad(), atomic_output(folder / "embedding.onnx") as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(splice, example, str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input_ids", "image_features"], output_names=["inputs_embeds"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "image_features": {0: "rows"},
                                        "inputs_embeds": {0: "batch", 1: "sequence"}})
    with atomic_output(folder / "vision.onnx") as tmp:
        onnx.save(_passthrough_vision(model.config.text_config.hidden_size), str(tmp))
    tokenizer.save_pretrained(folder)
    with atomic_output(folder / "genai_config.json") as tmp:
        tmp.write_text(json.dumps(genai_config(model), indent=2) + "\n")
    return folder


class GenaiLLM:
    """Greedy generation with onnxruntime-genai from prompt ids holding K image tokens each and
    the K reduced rows of each image."""

    takes_ids = True

    def __init__(self, folder: str | Path):
        try:
            # optional: onnxruntime-genai (par-export[cpu] or [gpu])
            import onnxruntime_genai as og  # noqa: PLC0415
        except ImportError as err:
            raise RuntimeError(f"onnxruntime-genai is not installed ({err}); pip install onnxruntime-genai, "
                               "or use the ONNX Runtime loop (--llm onnxruntime)") from None
        self.og = og
        self.model = og.Model(str(folder))
        config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]
        self.eos_token_id, self.context = config["eos_token_id"], config["context_length"]

    def generate(self, prompt_ids: list[list[int]], rows: list[np.ndarray], max_new_tokens: int,
                 min_new_tokens: int = 0, step_times: list | None = None) -> np.ndarray:
        """``[B, new]`` token ids (rows that stopped early padded with EOS); ``rows[b]`` is ``[K_b, D]``.
        ``step_times``: gets the ``time.perf_counter()`` at which each new token was chosen."""
        og, outputs = self.og, []
        for ids, image_rows in zip(prompt_ids, rows):
            params = og.GeneratorParams(self.model)
            length = min(len(ids) + max_new_tokens, self.context)
            params.set_search_options(max_length=length, min_length=min(len(ids) + min_new_tokens, length),
                                      do_sample=False)
            generator = og.Generator(self.model, params)
            inputs = og.NamedTensors()
            inputs["input_ids"] = np.asarray([ids], np.int32)
            inputs["pixel_values"] = np.ascontiguousarray(image_rows[None], np.float32)
            inputs["image_sizes"] = np.zeros((1, 2), np.int64)  # unused by the reshape
            inputs["num_image_tokens"] = np.array([len(image_rows)], np.int64)
            generator.set_inputs(inputs)
            while not generator.is_done():
                generator.generate_next_token()
                if step_times is not None:
                    step_times.append(time.perf_counter())
            outputs.append(list(generator.get_sequence(0))[len(ids):])
        width = max(map(len, outputs))
        return np.array([row + [self.eos_token_id] * (width - len(row)) for row in outputs], np.int64)
