"""What PAR needs from a CLIP vision tower beyond its hidden states."""

from __future__ import annotations

import torch
from torch import nn

from par_export.errors import ParExportError


def hidden_state_index(feature_layer: int, num_layers: int) -> int:
    """Index into ``hidden_states`` (embeddings + one per layer) of ``feature_layer``."""
    index = feature_layer % (num_layers + 1)
    if index == 0:
        raise ParExportError("vision_feature_layer selects the embeddings, which have no CLS attention")
    return index


def cls_attention(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the CLS token to the patch tokens in one CLIP layer.

    Computed from the layer's input with its own LayerNorm and q/k projections, so
    any attention implementation (sdpa, flash) can run the tower itself.

    Args:
        layer: a ``CLIPEncoderLayer`` (``layer_norm1``, ``self_attn.{q,k}_proj``).
        layer_input: ``[B, 1 + N, D]`` hidden states entering ``layer``.
    Returns:
        ``[B, N]`` float32, each row summing to at most 1 (the CLS self-weight is excluded).
    """
    attn = layer.self_attn
    b, t, _ = layer_input.shape
    normed = layer.layer_norm1(layer_input)
    q = attn.q_proj(normed[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(normed).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    weights = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)  # [B, H, 1, 1+N]
    return weights[:, :, 0, 1:].mean(dim=1)


def layer_keys(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """One CLIP layer's attention keys averaged over heads, ``[B, 1 + N, head_dim]``: VisionZip's
    ``metric`` (its ``CLIPAttention_forward`` returns ``raw_key_states.mean(1)``).

    Args:
        layer: a ``CLIPEncoderLayer``; layer_input: ``[B, 1 + N, D]`` hidden states entering it.
    """
    attn = layer.self_attn
    b, t, _ = layer_input.shape
    keys = attn.k_proj(layer.layer_norm1(layer_input)).view(b, t, attn.num_heads, attn.head_dim)
    return keys.mean(dim=2)
