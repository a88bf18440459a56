"""``--model``: a local Hugging Face folder, or one of the names par-export ships. Resolved here only.

``demo`` is the embedded demo VLM (LLaVA layout + CLIP, trained on the procedural VQA, in the
package), ``demo-qwen`` its Qwen2.5-VL-architecture sibling (dynamic resolution, M-RoPE; written by
``tools/train_demo_qwen.py``, not shipped yet); ``tiny`` writes a random-weight tiny LLaVA + CLIP through ``save_pretrained`` (quick
checks). Every command that takes ``--model`` takes any of the families in
:mod:`par_export.models.families`.
"""

from __future__ import annotations

from pathlib import Path

from par_export.models.demo import demo_paths, demo_qwen_path
from par_export.models.tiny import save_tiny_clip, save_tiny_llava

NAMES = {"demo": "the shipped demo VLM (LLaVA-1.5 layout + CLIP, trained on the procedural VQA)",
         "demo-qwen": "the demo VLM in the Qwen2.5-VL architecture (tools/train_demo_qwen.py; not shipped yet)",
         "tiny": "a random-weight tiny LLaVA-1.5 + CLIP, for quick checks"}

MODEL_HELP = ("a local Hugging Face folder (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL or Qwen3-VL), 'demo' (the shipped demo VLM, "
              "LLaVA-1.5 layout), 'demo-qwen' (the Qwen2.5-VL demo, once trained by tools/train_demo_qwen.py) or 'tiny' "
              "(random weights)")
"""The help text of every ``--model`` flag."""

TINY_RECORD = "tiny (random weights)"
"""What an export's metadata records for ``tiny`` (its folder is temporary): ``verify`` rebuilds it."""


def is_named(model: str | Path) -> bool:
    """``model`` is one of :data:`NAMES` rather than a folder."""
    return str(model) in NAMES


def resolve_model(model: str | Path, workdir: Path) -> tuple[Path, Path | None]:
    """``(model folder, CLIP folder or None)`` for ``--model``: a local folder, ``demo``, ``demo-qwen`` or ``tiny``
    (written to ``workdir``); a metadata's :data:`TINY_RECORD` resolves as ``tiny``."""
    name = str(model)
    if name == "tiny" or name == TINY_RECORD:
        llava = save_tiny_llava(Path(workdir) / "tiny-llava")
        return llava, save_tiny_clip(Path(workdir) / "tiny-clip", llava)
    if name == "demo":
        return demo_paths()
    if name == "demo-qwen":
        return demo_qwen_path(), None
    return Path(model), None


def recorded(model: str | Path, folder: Path) -> str:
    """What an export records as its ``model``: :data:`TINY_RECORD` for ``tiny``, else the folder."""
    return TINY_RECORD if str(model) == "tiny" else str(folder)


def display_name(model: str | Path, folder: Path) -> str:
    """A short name for file names and messages: the shipped name, else the folder's name."""
    return str(model) if is_named(model) else Path(folder).name


def default_budget(model: str | Path) -> int:
    """K a build exports with when none is given: 16 for ``tiny`` (64 tokens per image), else 64."""
    return 16 if str(model) == "tiny" else 64
