"""LLaVA-style JSONL evaluation files: parse errors name the line; bad images are skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from par_export.eval.jsonl import is_correct, load_images, read_jsonl


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_reported_with_their_number(tmp_path):
    good = json.dumps({"question_id": 1, "image": "a.png", "text": "Is there a cat?", "answer": "yes"})
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(write(tmp_path / "bad.jsonl", [good, "{oops"]))
    with pytest.raises(ValueError, match=r"missing.jsonl:3: missing \['answer'\]"):
        read_jsonl(write(tmp_path / "missing.jsonl", [good, "", json.dumps({"question_id": 2, "image": "b.png",
                                                                             "text": "?"})]))
    assert [r.question_id for r in read_jsonl(write(tmp_path / "ok.jsonl", [good, good]))] == ["1", "1"]


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    lines = [json.dumps({"question_id": i, "image": name, "text": "q", "answer": "yes"})
             for i, name in enumerate(["ok.png", "corrupt.png", "gone.png"])]
    records = read_jsonl(write(tmp_path / "eval.jsonl", lines))
    kept, images, skipped = load_images(records, tmp_path)
    assert [r.image for r in kept] == ["ok.png"] and [im.size for im in images] == [(30, 20)]
    assert skipped == {"unreadable image": 1, "missing image": 1}


def test_answer_matching():
    assert is_correct("Yes, there is.", "yes") and is_correct("red", "Red") and not is_correct("no", "yes")
    assert not is_correct("yesterday", "yes") and not is_correct("", "")
