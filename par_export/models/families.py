"""The registry of model families: a folder's ``config.json`` ``model_type`` picks one."""

from __future__ import annotations

from pathlib import Path

from par_export.models import internvl, llava, llava_next, qwen2_5_vl, qwen3_vl
from par_export.models.family import ModelFamily
from par_export.models.loading import ModelFolderError, read_config

FAMILIES: tuple[ModelFamily, ...] = (llava.FAMILY, llava_next.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY,
                                     internvl.FAMILY)


def supported() -> str:
    """``"llava (LLaVA-1.5: ...)"``-style list of the supported model types, for messages."""
    return "; ".join(f"{', '.join(f.model_types)} ({f.description})" for f in FAMILIES)


def family_for(folder: str | Path) -> ModelFamily:
    """The family of a local model folder, from its ``config.json``; a clear error otherwise."""
    model_type = read_config(folder).get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ModelFolderError(f"{Path(folder) / 'config.json'}: model_type is {model_type!r}, which par-export does "
                           f"not support; supported: {supported()}")


def family_named(name: str) -> ModelFamily:
    """The family an artifact's metadata names (``metadata["family"]``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ModelFolderError(f"model family {name!r} is not known to this par-export; known: "
                     f"{', '.join(f.name for f in FAMILIES)}")


def export_config(metadata):
    """The family's export config with the options an export recorded in its
    :class:`~par_export.artifact.metadata.ExportMetadata`."""
    family = family_named(metadata.family)
    if family.onnx_config is None:
        raise ModelFolderError(f"{family.name} has no ONNX export")
    export = metadata.export
    return family.onnx_config(budget_input=metadata.budget_input, opset=export.opset, batch_max=export.batch_max,
                              fp16=export.fp16)
