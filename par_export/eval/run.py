"""``par-export eval``'s one entry: which questions, which methods and budgets, reduced by which
backend (PyTorch, every method built for ONNX Runtime, or one built artifact)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from par_export.errors import ParExportError
from par_export.eval.vqa import artifact_budgets, build_eval_artifacts, evaluate, evaluate_jsonl
from par_export.models.families import family_for
from par_export.models.names import resolve_model
from par_export.reduce import PARConfig, reducer_class

DEFAULT_METHODS = ("par", "random", "pool", "cls_attn", "visionzip_mean", "prumerge_mean", "text_sim")
"""The methods eval scores when none are named, less those the model's family cannot take
(:func:`default_methods`)."""
DEFAULT_BUDGETS = (4, 8, 16, 32, 64, 128, "auto")


@dataclass(frozen=True)
class EvalOptions:
    """What ``par-export eval`` scores.

    Attributes:
        model, clip: the model folder (or ``demo``/``tiny``) and a CLIP folder for ``space=clip``.
        methods: reducer entries (``NAME`` or ``NAME:OPT=VALUE[:...]``; ``dart``), empty for
            :func:`default_methods`; ``budgets``: K
            values and/or ``"auto"``.
        backend: ``torch``, ``onnxruntime`` (every method exported and built) or a build folder (its
            method, the budgets it serves).
        split, n, batch: the procedural VQA questions; ``data``/``images``: a LLaVA-style JSONL and
            its image folder instead.
        par: PAR options for every entry; ``allow_unverified``: use an unverified artifact.
    """

    model: str = "demo"
    clip: str | None = None
    methods: tuple[str, ...] = ()  # () = default_methods(the model's folder)
    budgets: tuple = DEFAULT_BUDGETS
    backend: str = "torch"
    split: str = "test"
    n: int = 2000
    batch: int = 50
    data: str | None = None
    images: str | None = None
    par: tuple[str, ...] = ()
    allow_unverified: bool = False


def run_eval(options: EvalOptions) -> dict:
    """The evaluation's results (``evaluate`` / ``evaluate_jsonl``'s), the same meaning of ``par``,
    ``backend``, ``methods`` and ``budgets`` for the procedural split and for JSONL."""
    if bool(options.data) != bool(options.images):
        raise ParExportError("--data FILE.jsonl and --images DIR go together")
    budgets = list(options.budgets)
    config, artifacts = PARConfig().with_overrides(list(options.par)), None
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, shipped_clip = resolve_model(options.model, Path(tmp))
        methods = list(options.methods) or default_methods(model_dir)
        clip = options.clip or shipped_clip
        if options.backend == "onnxruntime":
            artifacts = build_eval_artifacts(model_dir, clip, methods, budgets, Path(tmp) / "artifacts", config)
        elif options.backend != "torch":
            if not Path(options.backend).is_dir():
                raise ParExportError(f"--backend {options.backend!r}: expected torch, onnxruntime or a "
                                     "`par-export build` folder")
            method, artifacts = artifact_budgets(Path(options.backend), budgets)
            methods, budgets = [method], [budget for _, budget in artifacts]
        if options.data:
            return evaluate_jsonl(model_dir, clip, Path(options.data), Path(options.images), methods, budgets,
                                  config=config, batch=min(options.batch, 8), artifacts=artifacts,
                                  allow_unverified=options.allow_unverified)
        return evaluate(model_dir, clip, methods, budgets, split=options.split, n=options.n, batch=options.batch,
                        config=config, artifacts=artifacts, allow_unverified=options.allow_unverified)


def default_methods(model_dir: str | Path) -> list[str]:
    """:data:`DEFAULT_METHODS` that the folder's family takes for every image: where N differs per
    image (LLaVA-NeXT's crops, Qwen2.5-VL's dynamic resolution) only the reducers that take any N
    (``pool`` needs a square grid; ``prumerge_mean`` a fixed N to trace)."""
    family = family_for(model_dir)
    config_dynamic = family.onnx_config is not None and family.onnx_config.dynamic_tokens
    if not (config_dynamic or getattr(family.adapter, "dynamic_tokens", False)):
        return list(DEFAULT_METHODS)
    return [m for m in DEFAULT_METHODS if reducer_class(m).dynamic_tokens]
