"""Prefill FLOPs of a LLaVA-style model with and without token reduction (docs/par.md, "FLOPs accounting").

Counts 2 FLOPs per multiply-add of every matrix product: attention projections
(grouped KV heads), the MLP at the config's intermediate size, the attention
scores and weighted sum over the full ``T x T`` matrix (what dense kernels
compute), and the LM head for the one position whose logits prefill needs.
Norms, activations, softmax and rotary embeddings are elementwise and left out
(well under 1% at these sizes).
"""

from __future__ import annotations

from dataclasses import dataclass


def transformer_layer_flops(tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                            intermediate: int, gated_mlp: bool) -> int:
    """FLOPs of one pre-norm transformer layer on ``tokens`` tokens."""
    t, d = tokens, hidden
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    projections = 2 * t * d * q_out + 2 * (2 * t * d * kv_out) + 2 * t * q_out * d
    attention = 2 * (2 * t * t * q_out)  # scores Q K^T and the weighted sum A V
    mlp = (3 if gated_mlp else 2) * 2 * t * d * intermediate
    return projections + attention + mlp


def attention_geometry(text_config) -> tuple[int, int]:
    """``(head_dim, kv_heads)`` of a decoder config (grouped-query attention aware)."""
    c = text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return head_dim, getattr(c, "num_key_value_heads", None) or c.num_attention_heads


def llm_prefill_flops(text_config, tokens: int, full_tokens: int | None = None, full_layers: int = 0) -> int:
    """Prefill of a Llama-style decoder on ``tokens`` positions, LM head on the last one. With
    ``full_layers``, the first that many layers see ``full_tokens`` (pruning inside the LLM, DART)."""
    c = text_config
    head_dim, kv_heads = attention_geometry(c)

    def layer(n: int) -> int:
        return transformer_layer_flops(n, c.hidden_size, c.num_attention_heads, kv_heads, head_dim,
                                       c.intermediate_size, gated_mlp=True)

    early = full_layers * layer(full_tokens) if full_layers else 0
    return early + (c.num_hidden_layers - full_layers) * layer(tokens) + 2 * c.hidden_size * c.vocab_size


def clip_encoder_flops(config, tokens: int, layers: int | None = None) -> int:
    """``layers`` (default: all) CLIP encoder layers on ``tokens`` tokens."""
    c = config
    head_dim = c.hidden_size // c.num_attention_heads
    layer = transformer_layer_flops(tokens, c.hidden_size, c.num_attention_heads, c.num_attention_heads, head_dim,
                                    c.intermediate_size, gated_mlp=False)
    return (c.num_hidden_layers if layers is None else layers) * layer


def vision_tower_flops(vision_config) -> int:
    """Patch embedding + every encoder layer on ``N + 1`` tokens (transformers runs all layers
    even when the features come from layer -2)."""
    c = vision_config
    patches = (c.image_size // c.patch_size) ** 2
    embed = 2 * patches * (3 * c.patch_size**2) * c.hidden_size
    return embed + clip_encoder_flops(c, patches + 1)


def projector_flops(vision_hidden: int, text_hidden: int, tokens: int) -> int:
    """LLaVA's two-layer MLP projector on ``tokens`` tokens."""
    return 2 * tokens * (vision_hidden * text_hidden + text_hidden * text_hidden)


def reducer_flops(tokens: int, hidden: int, kept: int, joint_dim: int, query_tokens: int, text_config=None) -> int:
    """PAR with ``space=clip``: similarity matrix, retrieval projection and cosine, the
    routing matmul of the merge, and the CLIP text tower on ``query_tokens`` tokens."""
    n, d = tokens, hidden
    similarity = 2 * n * n * d
    retrieval = 2 * n * d * joint_dim + 2 * n * joint_dim
    merge = 2 * n * kept * d
    query = 0 if text_config is None else clip_encoder_flops(text_config, query_tokens) + 2 * text_config.hidden_size * joint_dim
    return similarity + retrieval + merge + query


@dataclass(frozen=True)
class FlopsRow:
    """FLOPs of one (K, text length) setting, in FLOPs."""

    kept: int
    text_tokens: int
    llm: int
    vision: int
    projector: int
    reducer: int

    @property
    def total(self) -> int:
        return self.llm + self.vision + self.projector + self.reducer


def llava_flops(llava_config, kept: int, text_tokens: int, query_tokens: int = 16, clip_text_config=None) -> FlopsRow:
    """FLOPs of a LLaVA prefill with ``kept`` visual tokens (``kept == N``: no reducer)."""
    vision, text = llava_config.vision_config, llava_config.text_config
    n = (vision.image_size // vision.patch_size) ** 2
    reduce = 0
    if kept < n:
        reduce = reducer_flops(n, vision.hidden_size, kept, vision.projection_dim, query_tokens, clip_text_config)
    return FlopsRow(
        kept=kept,
        text_tokens=text_tokens,
        llm=llm_prefill_flops(text, kept + text_tokens),
        vision=vision_tower_flops(vision),
        projector=projector_flops(vision.hidden_size, text.hidden_size, kept),
        reducer=reduce,
    )


def flops_table(llava_config, budgets: list[int], text_lengths: list[int], clip_text_config=None) -> list[FlopsRow]:
    """One row per (text length, K), text length outermost."""
    return [llava_flops(llava_config, k, t, clip_text_config=clip_text_config) for t in text_lengths for k in budgets]


def format_flops_table(rows: list[FlopsRow], full_tokens: int, labels: list[str] | None = None) -> str:
    """Fixed-width table, TFLOPs, with each row's reduction against ``K = full_tokens``.

    ``labels`` names the K column of each row (default: K itself).
    """
    labels = labels or [str(r.kept) for r in rows]
    full = {r.text_tokens: r for r in rows if r.kept == full_tokens}
    lines = [
        f"{'K':>10} {'text':>5} | {'LLM TFLOPs':>10} {'LLM saved':>9} | {'vision':>7} {'proj':>7} {'reducer':>8} |"
        f" {'total TFLOPs':>12} {'total saved':>11}",
    ]
    for r, label in zip(rows, labels):
        base = full[r.text_tokens]
        lines.append(
            f"{label:>10} {r.text_tokens:>5} | {r.llm / 1e12:>10.3f} "
            f"{1 - r.llm / base.llm:>9.1%} | {r.vision / 1e12:>7.3f} {r.projector / 1e12:>7.3f} "
            f"{r.reducer / 1e12:>8.4f} | {r.total / 1e12:>12.3f} {1 - r.total / base.total:>11.1%}"
        )
    return "\n".join(lines)
