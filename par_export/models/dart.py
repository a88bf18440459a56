"""DART inside the LLM, as its paper and code define it, for evaluating a LLaVA-1.5 model.

DART (Wen et al., arXiv 2502.11494) prunes image tokens inside the language model: before
decoder layer ``layer`` (2 in the paper), it takes the key states of the layer before (after
RoPE, heads concatenated) and that layer's output (through the model's final norm). Pivots are
the ``image_pivots`` image tokens and the ``text_pivots`` text tokens after the image with the
largest key L1 norm; for each pivot in turn (Python set order, as the code iterates it) the
``per_pivot`` remaining image tokens least cosine-similar to it in the normed states are kept,
``per_pivot = floor(budget / (image_pivots + text_pivots))``. The image pivots and those picks
stay; every layer from ``layer`` on sees the kept positions only (text untouched, original
position ids). So the paper's "128 tokens" keeps 4 + 8 x 16 = 132 image tokens.

Follows ``DART.get_retained_image_token`` and ``DART.forward`` (``llava/model/language_model/
modeling_llama_self.py`` of the DART code, the xqy1111111/DART fork @ 9fee9fa of
ZichenWen1/DART), which runs one sample at a time; here each sample of a batch is pruned the
same way (equal image runs give equal lengths). It needs the LLM, so it is an evaluation
method (``par-export eval --methods dart``), not a reducer; the pre-LLM form that exports is
``dart_embed``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers

from par_export.errors import ParExportError


@dataclass(frozen=True)
class DartSettings:
    layer: int = 2
    image_pivots: int = 4
    text_pivots: int = 4


def retained_image_tokens(keys: torch.Tensor, states: torch.Tensor, start: int, length: int, budget: int,
                          settings: DartSettings = DartSettings()) -> list[int]:
    """One sample: ``keys [T, H * d]`` (RoPE'd key states of the layer before), ``states [T, D]``
    (its output through the final norm), the image run ``[start, start + length)``; the kept
    image positions, ascending."""
    per_pivot = budget // (settings.image_pivots + settings.text_pivots)
    image_norm = keys[start:start + length].abs().sum(dim=-1)
    text_norm = keys[start + length:].abs().sum(dim=-1)
    image = (image_norm.topk(settings.image_pivots).indices + start).tolist()
    text = (text_norm.topk(min(settings.text_pivots, text_norm.numel())).indices + start + length).tolist()
    kept = set(image + text)
    candidates = set(range(start, start + length)) - set(image)
    for pivot in list(kept):  # the code's order: a snapshot of the set, as CPython iterates it
        pool = list(candidates)
        if per_pivot < 1 or not pool:
            continue
        similarity = -F.cosine_similarity(states[pivot].unsqueeze(0), states[pool], dim=-1)
        chosen = [pool[i] for i in similarity.topk(min(per_pivot, len(pool))).indices.tolist()]
        kept.update(chosen)
        candidates.difference_update(chosen)
    kept.difference_update(text)
    return sorted(kept)


@contextlib.contextmanager
def dart_pruning(language_model, image_runs: list[tuple[int, int]], budget: int,
                 settings: DartSettings = DartSettings()):
    """While open, a forward of ``language_model`` (a transformers ``LlamaModel``-like decoder:
    ``layers``, ``norm``, rotary ``position_embeddings``) prunes each sample's image run
    ``(start, length)`` before layer ``settings.layer``. Yields a dict that receives ``"kept"``:
    the kept image positions per sample. Run it without a KV cache (``use_cache=False``)."""

    layers = language_model.layers
    if not 1 <= settings.layer < len(layers):
        raise ParExportError(f"DART prunes before decoder layer {settings.layer}; this model has {len(layers)}")
    state: dict = {}
    before = layers[settings.layer - 1].self_attn

    def capture_keys(module, args, output):
        state["k"] = output  # [B, T, H_kv * d], before RoPE

    def prune(module, args, kwargs):
        hidden = args[0]
        if "index" not in state:  # layer `settings.layer`: choose what stays
            b, t, _ = hidden.shape
            cos, sin = kwargs["position_embeddings"]
            k = state.pop("k").view(b, t, -1, before.head_dim).transpose(1, 2)
            k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(k, k, cos, sin)[1]
            k = k.repeat_interleave(before.num_key_value_groups, dim=1).transpose(1, 2).reshape(b, t, -1)
            normed = language_model.norm(hidden)
            index, kept = [], []
            for i, (start, length) in enumerate(image_runs):
                images = retained_image_tokens(k[i].float(), normed[i].float(), start, length, budget, settings)
                kept.append(images)
                others = [p for p in range(t) if not start <= p < start + length]
                index.append(sorted(others + images))
            state["index"] = torch.tensor(index, device=hidden.device)
            state["kept"] = kept
        index = state["index"]
        if hidden.shape[1] != index.shape[1]:
            hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        cos, sin = kwargs["position_embeddings"]
        kwargs = {**kwargs, "position_embeddings": (_rows(cos, index), _rows(sin, index))}
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = torch.gather(kwargs["position_ids"].expand(index.shape[0], -1), 1, index)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            rows = torch.gather(mask, 2, index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
            kwargs["attention_mask"] = torch.gather(rows, 3, index[:, None, None, :].expand(-1, mask.shape[1],
                                                                                           index.shape[1], -1))
        return (hidden, *args[1:]), kwargs  # LlamaModel passes hidden_states positionally

    handles = [before.k_proj.register_forward_hook(capture_keys)]
    handles += [layer.register_forward_pre_hook(prune, with_kwargs=True) for layer in layers[settings.layer:]]
    result: dict = {}
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
        result["kept"] = state.get("kept")


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B or 1, T, d]`` rotary table -> the rows of ``index [B, T']``."""
    table = table.expand(index.shape[0], -1, -1)
    return torch.gather(table, 1, index.unsqueeze(-1).expand(-1, -1, table.shape[-1]))


@torch.no_grad()
def dart_first_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            pixel_values: torch.Tensor, budget: int,
                            settings: DartSettings = DartSettings()) -> tuple[torch.Tensor, list[int]]:
    """A ``LlavaForConditionalGeneration`` forward with DART pruning inside its LLM: the last
    position's logits ``[B, V]`` and the image tokens kept per sample."""
    image_id = model.config.image_token_id
    runs = []
    for row in input_ids:
        positions = (row == image_id).nonzero().flatten()
        if positions.numel() == 0 or int(positions[-1] - positions[0]) + 1 != positions.numel():
            raise ParExportError("DART needs one contiguous run of image tokens per sample")
        runs.append((int(positions[0]), positions.numel()))
    if len({length for _, length in runs}) != 1:
        raise ParExportError("DART prunes a batch whose samples hold equal image runs")
    with dart_pruning(model.model.language_model, runs, budget, settings) as result:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                       use_cache=False).logits[:, -1]
    return logits, [len(k) for k in result["kept"]]
