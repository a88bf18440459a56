"""Procedural VQA: deterministic, answers follow from the scene, splits disjoint, vocabulary closed."""

from __future__ import annotations

import numpy as np
import pytest

from par_export.data.vqa import (
    IMAGE_SIZE,
    NUMBERS,
    QUESTION_TYPES,
    SPLITS,
    render,
    sample,
    split_seeds,
    vocabulary,
)
from par_export.models.tiny import word_tokenizer

SEEDS = list(range(300)) + list(split_seeds("test", 100))


def test_deterministic_per_seed():
    for seed in (0, 7, 2_000_001):
        a, b = sample(seed), sample(seed)
        assert a == b
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert sample(1) != sample(2)


def expected_answer(s) -> str:
    """The answer re-derived from the objects and the question's words, independently of the generator."""
    words = s.question.rstrip(" ?").split()
    objects = s.objects
    if s.kind == "color":  # what color is the <shape> at the <region>
        shape, region = words[4], " ".join(words[7:])
        (match,) = [o for o in objects if o.shape == shape and o.region == region]
        return match.color
    if s.kind == "exists":  # is there a <color> <shape>
        return "yes" if any(o.color == words[3] and o.shape == words[4] for o in objects) else "no"
    if s.kind == "count":  # how many <shape>s are there
        return NUMBERS[sum(o.shape + "s" == words[2] for o in objects)]
    if s.kind == "side":  # which side is the <color> <shape> on
        (match,) = [o for o in objects if o.color == words[4] and o.shape == words[5]]
        return "left" if match.x < IMAGE_SIZE / 2 else "right"
    (match,) = [o for o in objects if o.color == words[4]]  # what shape is the <color> object
    return match.shape


def test_answers_follow_from_the_scene():
    kinds = set()
    for seed in SEEDS:
        s = sample(seed)
        kinds.add(s.kind)
        assert 6 <= len(s.objects) <= 16
        assert all(o.radius <= o.x <= IMAGE_SIZE - o.radius and o.radius <= o.y <= IMAGE_SIZE - o.radius
                   for o in s.objects)
        assert s.answer == expected_answer(s), (seed, s.question, s.answer)
    assert kinds == set(QUESTION_TYPES)


def test_every_question_type_can_be_forced():
    for kind in QUESTION_TYPES:  # a scene that cannot pose it (no unique object) falls back to counting
        kinds = [sample(seed, kind).kind for seed in range(30)]
        assert set(kinds) <= {kind, "count"} and kinds.count(kind) >= 20


def test_exists_questions_are_balanced():
    answers = [sample(seed, "exists").answer for seed in range(400)]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_splits_are_disjoint_and_bounded():
    ranges = [range(*bounds) for bounds in SPLITS.values()]
    assert all(a.stop <= b.start for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("dev", 10)


def test_vocabulary_covers_every_text():
    tokenizer = word_tokenizer(append_eos=False, words=vocabulary())
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    for seed in SEEDS[:100]:
        s = sample(seed)
        for text in (s.question, s.answer, s.caption, "USER : ASSISTANT :"):
            assert unk not in tokenizer(text)["input_ids"], text
    assert len(tokenizer(sample(0).answer, add_special_tokens=False)["input_ids"]) == 1  # one-word answers
