"""Memory of a LLaVA-style prefill with full vs reduced visual tokens, computed from configs.

Counts the LLM weights (at a given weight precision), the KV cache (fp16 unless told),
and the largest prefill activations: the attention score matrix of one layer
(``heads x T x T``, eager attention; fused kernels avoid it) and the MLP's widest
intermediate. Runtime overheads (CUDA context, allocator slack, the vision tower) are
not modelled: the table compares contexts, it does not promise a fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from par_export.flops import attention_geometry

BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


def llm_parameters(text_config) -> int:
    """Parameters of a Llama-style decoder: embeddings, attention, gated MLP, norms, LM head."""
    c = text_config
    head_dim, kv_heads = attention_geometry(c)
    kv = kv_heads * head_dim
    attention = c.hidden_size * c.num_attention_heads * head_dim * 2 + c.hidden_size * kv * 2
    mlp = 3 * c.hidden_size * c.intermediate_size
    per_layer = attention + mlp + 2 * c.hidden_size
    return c.vocab_size * c.hidden_size * 2 + c.num_hidden_layers * per_layer + c.hidden_size


def kv_cache_bytes(text_config, tokens: int, precision: str = "fp16") -> float:
    c = text_config
    head_dim, kv_heads = attention_geometry(c)
    return 2 * c.num_hidden_layers * kv_heads * head_dim * tokens * BYTES[precision]


@dataclass(frozen=True)
class MemoryRow:
    visual_tokens: int
    text_tokens: int
    weights: float
    kv_cache: float
    attention_scores: float
    mlp_activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.attention_scores + self.mlp_activations


def prefill_memory(text_config, visual_tokens: int, text_tokens: int, weights: str = "int4",
                   activations: str = "fp16") -> MemoryRow:
    c = text_config
    t = visual_tokens + text_tokens
    return MemoryRow(
        visual_tokens, text_tokens,
        weights=llm_parameters(c) * BYTES[weights],
        kv_cache=kv_cache_bytes(c, t, activations),
        attention_scores=c.num_attention_heads * t * t * BYTES[activations],
        mlp_activations=2 * t * c.intermediate_size * BYTES[activations],
    )


def format_memory_table(rows: list[MemoryRow], device_bytes: float | None = None) -> str:
    gib = 2**30
    lines = [f"{'visual':>6} {'text':>5} | {'weights':>8} {'KV cache':>9} {'attn scores':>11} {'MLP act.':>9} | "
             f"{'total GiB':>9}" + (f" {'of device':>9}" if device_bytes else "")]
    for r in rows:
        line = (f"{r.visual_tokens:>6} {r.text_tokens:>5} | {r.weights / gib:>8.2f} {r.kv_cache / gib:>9.3f} "
                f"{r.attention_scores / gib:>11.3f} {r.mlp_activations / gib:>9.3f} | {r.total / gib:>9.2f}")
        if device_bytes:
            line += f" {r.total / device_bytes:>9.1%}"
        lines.append(line)
    return "\n".join(lines)
