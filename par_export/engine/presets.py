"""Target presets (``par_export/engine/presets/*.json``, package data): precision, profiles, workspace,
DLA per device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from par_export.artifact.manifest import PRECISIONS
from par_export.errors import ParExportError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    compute_capability: str
    precision: str
    precisions: tuple[str, ...]
    batch: tuple[int, int, int]  # min, opt, max
    budget: tuple[int, int, int]
    workspace_mib: int
    dla_core: int | None


def _triple(name: str, field: str, value) -> tuple[int, int, int]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v >= 1 for v in value)
            and value[0] <= value[1] <= value[2]):
        raise ParExportError(f"preset {name}: {field} must be [min, opt, max] positive ints with min <= opt <= max, got {value}")
    return tuple(value)


def parse_preset(data: dict) -> Preset:
    """Validate a preset's fields; errors name the preset and the field."""
    name = data.get("name", "?")
    required = {"name", "description", "compute_capability", "precision", "precisions", "batch", "budget",
                "workspace_mib", "dla_core"}
    missing = required - set(data)
    if missing:
        raise ParExportError(f"preset {name}: missing fields {sorted(missing)}")
    unknown = set(data) - required
    if unknown:
        raise ParExportError(f"preset {name}: unknown fields {sorted(unknown)}")
    bad = [p for p in data["precisions"] if p not in PRECISIONS]
    if bad or data["precision"] not in data["precisions"]:
        raise ParExportError(f"preset {name}: precisions must be among {PRECISIONS} and include precision "
                         f"{data['precision']!r}, got {data['precisions']}")
    major, _, minor = str(data["compute_capability"]).partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ParExportError(f"preset {name}: compute_capability must look like '8.7', got {data['compute_capability']!r}")
    if not isinstance(data["workspace_mib"], int) or data["workspace_mib"] < 64:
        raise ParExportError(f"preset {name}: workspace_mib must be an int >= 64")
    if data["dla_core"] is not None and data["dla_core"] not in (0, 1):
        raise ParExportError(f"preset {name}: dla_core must be null, 0 or 1")
    return Preset(name, data["description"], str(data["compute_capability"]), data["precision"],
                  tuple(data["precisions"]), _triple(name, "batch", data["batch"]),
                  _triple(name, "budget", data["budget"]), data["workspace_mib"], data["dla_core"])


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Preset:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ParExportError(f"unknown target preset {name!r}; available: {', '.join(available_presets())}")
    return parse_preset(json.loads(path.read_text()))
