"""tools/train_demo.py's attention-lookup supervision (the answer positions it supervises and
the loss it puts on them) and the image tokens a VQA batch keeps (the training itself is not run
in CI)."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "train_demo.py"


@pytest.fixture(scope="module")
def train_demo():
    spec = importlib.util.spec_from_file_location("train_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asks_point_at_the_token_that_predicts_each_answer(train_demo):
    from par_export.data.vqa import make_scene, vocabulary
    from par_export.models.tiny import word_tokenizer

    tokenizer = word_tokenizer(append_eos=False, words=vocabulary())
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    objects, _ = make_scene(random.Random(7))
    ids, labels, asks = train_demo.Conversations(tokenizer, image_id).build(objects, random.Random(0), 5, 40)
    assert len(asks) == 5 and ids.count(image_id) == 40
    colon = tokenizer.convert_tokens_to_ids(":")
    for position, target, kind in asks:
        assert ids[position] == colon and labels[position] == -100 and labels[position + 1] == ids[position + 1]
        assert all(0 <= i < len(objects) for i in target) and kind in train_demo.QUESTION_TYPES


def test_retrieval_loss_rewards_the_lookup_each_question_needs(train_demo):
    image_id = 9
    input_ids = torch.tensor([[1, 9, 9, 9, 9, 5, 6]])  # <s>, four image tokens, question, ":"
    owners = [torch.tensor([0, 1, -1, 1])]  # object of each image token, in sequence order
    centres = [torch.tensor([True, True, False, False])]  # object 1's centre is image token 1 (position 2)
    attention = torch.zeros(1, 7, 7)
    attention[0, 6, [0, 2, 4]] = torch.tensor([0.5, 0.25, 0.25])

    def loss(kind, target=(1,)):
        rows = [(None, None, [(6, target, kind)])]
        return train_demo.retrieval_loss(attention, input_ids, rows, owners, centres, image_id).item()

    assert loss("side") == pytest.approx(math.log(2), abs=1e-6)  # half the mass on object 1's patches
    assert loss("side", (0,)) == pytest.approx(-math.log(1e-6), abs=1e-3)  # none on object 0's: floor
    # counting: evenly over <s> and each counted centre (here 1 object): -(log 0.5 + log 0.25) / 2
    assert loss("count") == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    assert loss("exists", ()) == pytest.approx(math.log(2), abs=1e-6)  # "no": all on the sink


def test_image_tokens_kept_are_the_objects_plus_at_most_the_asked_background(train_demo):
    from par_export.data.vqa import make_scene

    owner = torch.from_numpy(train_demo.patch_targets(make_scene(random.Random(3))[0])["owner"])
    before = owner.clone()
    objects = owner >= 0
    assert 0 < int(objects.sum()) < owner.numel()
    assert torch.equal(train_demo.image_tokens_kept(owner, random.Random(0), 0), objects)
    extras = []
    for seed in range(20):
        keep = train_demo.image_tokens_kept(owner, random.Random(seed), 64)
        assert bool(keep[objects].all())  # every object patch stays
        extras.append(int((keep & ~objects).sum()))
    assert max(extras) <= 64 and len(set(extras)) > 1  # a random number of background patches, capped
    everything = train_demo.image_tokens_kept(owner, random.Random(0), 10_000)  # draws more than there are
    assert bool(everything.all())
    assert torch.equal(owner, before)  # the cached targets are not written to
