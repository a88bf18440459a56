"""Local-only, safetensors-only loading of Hugging Face model folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import transformers

from par_export.errors import ParExportError


class ModelFolderError(ParExportError):
    """A path that is not a loadable Hugging Face model folder of the expected type."""


def read_config(path: str | Path) -> dict:
    """``config.json`` of a local folder; :class:`ModelFolderError` if the folder or file is missing or bad."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a folder (expected a local Hugging Face model folder; hubs are not used)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{folder}: no config.json, so this is not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_path}: expected a JSON object")
    return config


def check_model_folder(path: str | Path, model_types: tuple[str, ...]) -> dict:
    """Validate ``path`` and return its ``config.json``.

    Raises :class:`ModelFolderError` naming what is missing: the folder, its
    config, a ``model_type`` in ``model_types``, or ``.safetensors`` weights
    (pickled ``.bin`` weights are never loaded).
    """
    folder = Path(path)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise ModelFolderError(f"{folder}: model_type is {model_type!r}, expected one of {model_types}")
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {found}: pickled weights are not loaded; convert them to safetensors)" if found else ""
        raise ModelFolderError(f"{folder}: no .safetensors weights{hint}")
    return config


def load_pretrained_model(path: str | Path, model_types: tuple[str, ...], model_class: str, dtype=None):
    """The checkpoint's transformers model (``model_class`` by name), in eval mode, after
    :func:`check_model_folder`: local, safetensors, no remote code, every weight matched
    (:func:`load_matching`)."""

    check_model_folder(path, model_types)
    return load_matching(getattr(transformers, model_class), path, dtype=dtype).eval()


def load_matching(model_class, path: str | Path, **kwargs):
    """``model_class.from_pretrained(path)`` that refuses weights not matching the architecture
    ``config.json`` declares: missing, unexpected or mis-shaped keys are a :class:`ModelFolderError`
    naming a few of them. transformers would load such a folder with the missing weights at random
    init (after an 80-line report), and the export would then validate a random model."""
    # its load report is said in one line below; a filter, not setLevel: transformers runs an extra
    # tensor-parallel check (and warns) whenever that logger's own level is WARNING or above
    report = logging.getLogger("transformers.modeling_utils")
    quiet = logging.Filter("nothing")  # passes only records of a logger named "nothing": none
    report.addFilter(quiet)
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, **pretrained_kwargs(), **kwargs)
    except RuntimeError as err:  # transformers' "size mismatch" error for a shape that differs
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
        raise ModelFolderError(f"{path}: its weights do not match {model_class.__name__}, the architecture its "
                               f"config.json declares: {len(shapes)} mis-shaped ({shapes[0][:200]}); check that "
                               "the weights belong to this config") from None
    finally:
        report.removeFilter(quiet)
    wrong = {kind: sorted(info.get(f"{kind}_keys") or ()) for kind in ("missing", "unexpected", "mismatched")}
    if any(wrong.values()):
        found = "; ".join(f"{len(keys)} {kind} ({', '.join(map(str, keys[:2]))}{', ...' if len(keys) > 2 else ''})"
                          for kind, keys in wrong.items() if keys)
        raise ModelFolderError(f"{path}: its weights do not match {model_class.__name__}, the architecture its "
                               f"config.json declares: {found}; check model_type and that the weights belong to "
                               "this config")
    return model


def pretrained_kwargs() -> dict:
    """Keyword arguments for every ``from_pretrained`` call: local, safetensors, no remote code."""
    return {"local_files_only": True, "use_safetensors": True, "trust_remote_code": False}
