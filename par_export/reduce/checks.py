"""Input validation shared by all reducers: clear errors instead of failures deep in torch.

The checks read tensor values, so they run only in eager mode; under tracing or
export the graph must not depend on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from par_export.errors import ParExportError

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_exporting() -> bool:
    """True while torch traces the model (TorchScript, dynamo, ONNX export)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


_MIN_TOKENS: int | None = None  # set while exporting a graph whose token axis N is dynamic


@contextmanager
def dynamic_token_axis(min_tokens: int) -> Iterator[None]:
    """Export with a dynamic token axis: N is only known to be ``>= min_tokens``.

    Inside, :func:`token_bound` answers ``min_tokens`` while tracing, so output widths
    (``min(k_max, N)``) and neighbour counts (``min(k_nn, N - 1)``) are fixed from it and no
    size of the traced example is baked into the graph; an image with fewer tokens is the
    caller's to refuse. Eager calls inside are unaffected.
    """
    global _MIN_TOKENS
    if min_tokens < 1:
        raise ParExportError(f"min_tokens must be >= 1, got {min_tokens}")
    previous, _MIN_TOKENS = _MIN_TOKENS, int(min_tokens)
    try:
        yield
    finally:
        _MIN_TOKENS = previous


def token_bound(values: torch.Tensor, dim: int = 1) -> int:
    """The static token count to size outputs by: N itself, or the lower bound of a dynamic token
    axis while exporting under :func:`dynamic_token_axis`."""
    if _MIN_TOKENS is not None and is_exporting():
        return _MIN_TOKENS
    return int(values.shape[dim])


def token_count(values: torch.Tensor, dim: int = 1):
    """N for ops that need all N tokens (a full sort): a python int (a static TopK K, which
    TensorRT needs) except under :func:`dynamic_token_axis`, where it is the traced size."""
    if _MIN_TOKENS is not None and is_exporting():
        return values.shape[dim]
    return int(values.shape[dim])


def check_float_tensor(name: str, value: object, shape: str, rank: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(value).__name__}")
    if value.dim() != rank:
        raise ParExportError(f"{name} must have rank {rank} {shape}, got shape {tuple(value.shape)}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {value.dtype}")
    if 0 in value.shape:  # an empty axis would reach amax()/softmax over nothing
        axes = shape.strip("[]").split(", ")
        empty = ", ".join(f"{axis}=0" for axis, size in zip(axes, value.shape) if size == 0)
        raise ParExportError(f"{name} {shape} has an empty axis ({empty}); every axis needs at least one element")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ParExportError(f"{name} contains {bad} NaN/Inf value(s); reducers need finite inputs")
    return value


def check_reducer_inputs(
    visual_tokens: object,
    prompt_embedding: object,
    prompt_mask: object,
    attn: object,
) -> None:
    """Validate ranks, shapes, dtypes and finiteness of a reducer's inputs."""
    tokens = check_float_tensor("visual_tokens", visual_tokens, "[B, N, D]", 3)
    b, n, _ = tokens.shape
    if n < 2:
        raise ParExportError(f"visual_tokens needs at least 2 tokens per image, got N={n}")
    if prompt_embedding is not None:
        prompt = check_float_tensor("prompt_embedding", prompt_embedding, "[B, P, Dq]", 3)
        if prompt.shape[0] != b:
            raise ParExportError(f"prompt_embedding has batch {prompt.shape[0]}, visual_tokens has batch {b}")
        if prompt_mask is not None:
            if not isinstance(prompt_mask, torch.Tensor) or tuple(prompt_mask.shape) != tuple(prompt.shape[:2]):
                got = tuple(prompt_mask.shape) if isinstance(prompt_mask, torch.Tensor) else type(prompt_mask).__name__
                raise ParExportError(f"prompt_mask must be a [B, P] = {tuple(prompt.shape[:2])} tensor, got {got}")
    elif prompt_mask is not None:
        raise ParExportError("prompt_mask was given without prompt_embedding")
    if attn is not None:
        weights = check_float_tensor("attn", attn, "[B, N]", 2)
        if tuple(weights.shape) != (b, n):
            raise ParExportError(f"attn must have shape [B, N] = {(b, n)}, got {tuple(weights.shape)}")


def check_cluster_tokens(cluster_tokens: object, visual_tokens: torch.Tensor, accepted: bool, method: str) -> None:
    """Validate ``cluster_tokens [B, N, Dc]``: the same B and N as ``visual_tokens``, finite floats,
    for a reducer that takes them."""
    if not accepted:
        raise ParExportError(f"method {method!r} computes its similarities from visual_tokens; it takes no "
                             "cluster_tokens")
    tokens = check_float_tensor("cluster_tokens", cluster_tokens, "[B, N, Dc]", 3)
    if tokens.shape[:2] != visual_tokens.shape[:2]:
        raise ParExportError(f"cluster_tokens {tuple(tokens.shape)}: expected [B, N, Dc] with [B, N] = "
                             f"{list(visual_tokens.shape[:2])} (the same tokens as visual_tokens)")


def check_budget_value(budget: object, num_tokens: int, max_width: int, supports_auto: bool, method: str) -> None:
    """Validate a call's budget: int in [1, N], ``"auto"``, or a 0-d integer tensor."""
    if isinstance(budget, str):
        if budget != "auto":
            raise ParExportError(f"budget must be a positive int or 'auto', got {budget!r}")
        if not supports_auto:
            raise ParExportError(f"method {method!r} has no adaptive budget; pass an int budget (1..N)")
        return
    if isinstance(budget, torch.Tensor):
        if budget.dim() != 0 or budget.dtype not in (torch.int32, torch.int64):
            raise ParExportError(f"a tensor budget must be a 0-d int32/int64 tensor, got {budget.dtype} {tuple(budget.shape)}")
        k = int(budget)
        if not 1 <= k <= max_width:
            raise ParExportError(f"tensor budget must be in [1, {max_width}] (k_max, N={num_tokens}), got {k}")
        return
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ParExportError(f"budget must be a positive int, 'auto' or a 0-d int tensor, got {budget!r}")
    if not 1 <= budget <= num_tokens:
        raise ParExportError(f"budget must be in [1, N={num_tokens}], got {budget}")


def check_token_mask(token_mask: object, visual_tokens: torch.Tensor, budget: object) -> torch.Tensor:
    """Validate ``token_mask [B, N]`` (bool or 0/1 ints) and return it as bool: every image needs at
    least 2 real tokens, and an int budget must not exceed any image's real token count."""
    b, n = visual_tokens.shape[:2]
    if not isinstance(token_mask, torch.Tensor) or tuple(token_mask.shape) != (b, n):
        got = tuple(token_mask.shape) if isinstance(token_mask, torch.Tensor) else type(token_mask).__name__
        raise ParExportError(f"token_mask must be a [B, N] = {(b, n)} tensor, got {got}")
    if token_mask.dtype != torch.bool:
        if token_mask.dtype.is_floating_point or not bool(((token_mask == 0) | (token_mask == 1)).all()):
            raise ParExportError(f"token_mask must be bool (or 0/1 integers), got {token_mask.dtype}")
        token_mask = token_mask.bool()
    counts = token_mask.sum(dim=1).tolist()
    for image, count in enumerate(counts):
        if count < 2:
            raise ParExportError(f"token_mask: image {image} has {count} real token(s); reducers need at least 2")
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > count:
            raise ParExportError(f"budget {budget} exceeds image {image}'s {count} tokens (token_mask)")
    return token_mask
