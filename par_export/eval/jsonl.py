"""LLaVA-style evaluation files: one JSON object per line with ``question_id``, ``image``,
``text`` and ``answer``, images in a folder (POPE/GQA-style files converted to this form).

Bad lines are errors with their line number; missing or unreadable images are skipped
and counted, not fatal.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from par_export.errors import ParExportError
from par_export.processing import InputError, open_image

REQUIRED = ("question_id", "image", "text", "answer")


@dataclass(frozen=True)
class Record:
    question_id: str
    image: str
    text: str
    answer: str


def read_jsonl(path: str | Path) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such evaluation file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ParExportError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        missing = [key for key in REQUIRED if key not in item] if isinstance(item, dict) else list(REQUIRED)
        if missing:
            raise ParExportError(f"{path}:{number}: missing {missing}; each line needs {list(REQUIRED)}")
        records.append(Record(str(item["question_id"]), str(item["image"]), str(item["text"]), str(item["answer"])))
    return records


def load_images(records: list[Record], folder: str | Path):
    """``(kept records, their RGB PIL images, skipped {reason: count})``; the model's processor
    turns the images into pixels."""

    kept, images, skipped = [], [], Counter()
    for record in records:
        path = Path(folder) / record.image
        if not path.is_file():
            skipped["missing image"] += 1
            continue
        try:
            images.append(open_image(path))
        except InputError:
            skipped["unreadable image"] += 1
            continue
        kept.append(record)
    return kept, images, dict(skipped)


def normalize_answer(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_correct(prediction: str, answer: str) -> bool:
    """The normalized prediction starts with the normalized answer (one-word and yes/no answers)."""
    predicted, expected = normalize_answer(prediction), normalize_answer(answer)
    return bool(expected) and (predicted == expected or predicted.startswith(expected + " "))
