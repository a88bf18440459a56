"""What par-export needs to know about one model family, declared once in its module.

Each ``par_export/models/<family>.py`` ends with a ``FAMILY = ModelFamily(...)``: the
``config.json`` ``model_type`` values it serves, the transformers class that loads it,
the adapter that puts a reducer inside it, its ONNX export config (graphs, inputs,
dynamic axes, dummy inputs, validation cases) and its prompt handling. The registry in
:mod:`par_export.models.families` picks the family from a folder's ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from par_export.models.loading import load_pretrained_model
from par_export.processing import ModelInputs


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    Attributes:
        name: short name (``llava``), used in messages and docs.
        description: what it covers, for the list of supported families.
        adapter: class with ``from_pretrained(path, method, config, clip_path, dtype)`` that runs
            the model with a reducer inside (e.g. :class:`~par_export.models.llava.ReducedLlava`);
            its ``model_types`` (``config.json`` values served) and ``model_class`` (the
            transformers class, by name) are the family's.
        onnx_config: export config class (Optimum-style): ``vision_par`` / ``query_encoder``
            graph specs, ``dummy_inputs``, ``vision_cases``, ``query_cases``, ``shape_bounds``;
            ``None`` for a family that runs in PyTorch only so far (export refuses it).
        image_token: the placeholder string of one image in a prompt.
        fallback_template: ``{prompt}`` template used only when the tokenizer has no chat template.
        pipeline: the LLM pipeline splices this family's fixed-size image runs into
            ``inputs_embeds`` (LLaVA-1.5: ``chat``, ``eval --backend``, ``emit``, every LLM runtime).
        places_rows: an M-RoPE family the LLM pipeline serves one image per graph call, its adapter
            placing an artifact's rows and their positions (``reduced_inputs``, ``full_inputs``):
            ``chat`` and ``eval --backend`` with transformers answering.
        onnx_llm: besides, the exported LLM (:mod:`par_export.runtime.llm_onnx`) takes its rows and
            positions (``prompt_embeds``): ``chat --llm onnxruntime``, ``emit --runtime edge-llm``.
    """

    name: str
    description: str
    adapter: type
    onnx_config: type | None
    image_token: str
    fallback_template: str
    pipeline: bool = False
    places_rows: bool = False
    onnx_llm: bool = False

    @property
    def model_types(self) -> tuple[str, ...]:
        """``config.json`` ``model_type`` values served (declared once, on the adapter)."""
        return self.adapter.model_types

    @property
    def model_class(self) -> str:
        """The transformers class that loads a checkpoint (declared once, on the adapter)."""
        return self.adapter.model_class

    def load_model(self, folder: str | Path, dtype=None):
        """The checkpoint's transformers model (local, safetensors, no remote code), in eval mode."""

        return load_pretrained_model(folder, self.model_types, self.model_class, dtype)

    def inputs(self, folder: str | Path):
        """The folder's own processor and chat template (:class:`~par_export.processing.ModelInputs`)."""

        return ModelInputs.from_folder(folder, self.image_token, self.fallback_template)
