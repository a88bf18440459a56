"""The LLM of a vision-language model in ONNX with a KV cache, taking ``inputs_embeds``, and a
thin batched greedy loop over ONNX Runtime that runs it. onnxruntime-genai runs the same graph
for LLaVA (:mod:`par_export.runtime.llm_genai`); this loop remains for batched generation with
a different K per prompt, for M-RoPE models, and for machines without onnxruntime-genai.

Graph ``llm.onnx`` (onnxruntime-genai's decoder names): ``inputs_embeds [B, T, D]``,
``attention_mask [B, P+T]``, ``position_ids [B, T]`` (M-RoPE models, Qwen2.5-VL:
``[3, B, T]``, the (t, h, w) rows ``get_rope_index`` gives, or the reduced context's),
``past_key_values.{l}.key/value [B, kv_heads, P, head_dim]`` -> ``logits [B, T, V]`` (every
position: onnxruntime-genai preallocates them so), ``present.{l}.key/value [B, kv_heads, P+T, head_dim]``.
``embed_tokens.npy`` holds the input embedding table for the decode steps.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers

from par_export.backends.onnxruntime import ort_session
from par_export.errors import ParExportError
from par_export.files import atomic_output


class _DecoderStep(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.text_config.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        cache = transformers.DynamicCache(config=self.model.config.text_config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


PAST, PRESENT = "past_key_values.%d.%s", "present.%d.%s"


def cache_names(layers: int, pattern: str) -> list[str]:
    return [pattern % (layer, kv) for layer in range(layers) for kv in ("key", "value")]


def is_mrope(text_config) -> bool:
    """The LLM rotates by multimodal (t, h, w) positions (Qwen2.5-VL's M-RoPE): its
    ``position_ids`` are ``[3, B, T]``."""
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    return "mrope_section" in rope


def export_llm(model, folder: str | Path, opset: int = 17) -> Path:
    """Write ``llm.onnx`` and ``embed_tokens.npy`` for a ``LlavaForConditionalGeneration`` or a
    ``Qwen2_5_VLForConditionalGeneration`` (``position_ids [3, B, T]``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    layers = text.num_hidden_layers
    model.set_attn_implementation("eager")  # a traceable attention; numerically the same
    step = _DecoderStep(model.eval())
    batch, length, past = 2, 3, 2
    positions = torch.arange(past, past + length).expand(batch, length)
    mrope = is_mrope(text)
    if mrope:  # three rows that differ, so that the trace keeps them apart
        positions = torch.stack([positions, positions + 1, positions + 2])
    example = (torch.randn(batch, length, text.hidden_size), torch.ones(batch, past + length, dtype=torch.long),
               positions, *[torch.randn(batch, kv_heads, past, head_dim) for _ in range(2 * layers)])
    inputs, outputs = cache_names(layers, PAST), cache_names(layers, PRESENT)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {1: "batch", 2: "sequence"} if mrope else {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past"} for n in inputs})
    axes.update({n: {0: "batch", 2: "total"} for n in outputs})
    with warnings.catch_warnings(), torch.no_grad(), atomic_output(folder / "llm.onnx") as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(step, example, str(tmp), dynamo=False, opset_version=opset,
                          input_names=["inputs_embeds", "attention_mask", "position_ids", *inputs],
                          output_names=["logits", *outputs], dynamic_axes=axes)
    with atomic_output(folder / "embed_tokens.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, model.get_input_embeddings().weight.detach().float().numpy(), allow_pickle=False)
    return folder / "llm.onnx"


class OnnxRuntimeLLM:
    """Greedy generation from ``inputs_embeds`` over ONNX Runtime with the exported KV cache."""

    def __init__(self, folder: str | Path, eos_token_id: int | None = None):
        folder = Path(folder)
        self.session = ort_session(folder / "llm.onnx")
        self.embed_tokens = np.load(folder / "embed_tokens.npy", allow_pickle=False)
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        shape = next(i for i in self.session.get_inputs() if i.name == PAST % (0, "key")).shape
        self.kv_heads, self.head_dim = shape[1], shape[3]
        self.mrope = len(next(i for i in self.session.get_inputs() if i.name == "position_ids").shape) == 3
        self.eos_token_id = eos_token_id

    def generate(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
                 min_new_tokens: int = 0, step_times: list | None = None,
                 position_ids: np.ndarray | None = None) -> np.ndarray:
        """``[B, new]`` token ids; rows that reached EOS are padded with it. ``step_times``: gets the
        ``time.perf_counter()`` at which each new token was chosen. ``position_ids``: the prompt's
        ``[3, B, T]`` M-RoPE positions, required by an M-RoPE graph (each new token then takes the
        last position + 1 in every row, as ``generate`` in transformers does); otherwise positions
        count the attended tokens."""
        batch = inputs_embeds.shape[0]
        mask = attention_mask.astype(np.int64)
        if self.mrope:
            if position_ids is None or np.shape(position_ids) != (3, *mask.shape):
                raise ParExportError(f"this LLM takes M-RoPE position_ids [3, B, T] = [3, {mask.shape[0]}, "
                                     f"{mask.shape[1]}], got {None if position_ids is None else np.shape(position_ids)}")
            positions = np.asarray(position_ids, np.int64)
        else:
            positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        past = {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}
        embeds, position_ids = inputs_embeds.astype(np.float32), positions
        tokens, done = [], np.zeros(batch, bool)
        for step in range(max_new_tokens):
            logits, *presents = self.session.run(None, {"inputs_embeds": embeds, "attention_mask": mask,
                                                        "position_ids": position_ids, **past})
            scores = logits[:, -1]
            if self.eos_token_id is not None and step < min_new_tokens:
                scores[:, self.eos_token_id] = -np.inf
            token = scores.argmax(-1)
            if self.eos_token_id is not None:
                token = np.where(done, self.eos_token_id, token)
                done |= token == self.eos_token_id
            tokens.append(token)
            if step_times is not None:
                step_times.append(time.perf_counter())
            if done.all():
                break
            past = dict(zip(self.past_names, presents))
            next_position = position_ids[..., -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            embeds, position_ids = self.embed_tokens[token][:, None, :], next_position
        return np.stack(tokens, axis=1)
