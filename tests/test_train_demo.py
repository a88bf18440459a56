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


def test_demo_qwen_rows_are_the_processors_and_its_patch_order_is_the_processors(tmp_path):
    """tools/train_demo_qwen.py: a one-turn training row is what the checkpoint's processor and
    chat template give (image tokens, question, generation prompt), and ``processor_order`` is
    the order the image processor lays patches out in (2 x 2 merge blocks, raster inside)."""
    import sys

    import numpy as np
    import transformers
    from PIL import Image

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("train_demo_qwen", SCRIPT.parent / "train_demo_qwen.py")
    qwen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qwen)
    from par_export.data.vqa import render, sample, vocabulary
    from par_export.models.tiny import qwen_word_tokenizer, save_qwen_image_processor
    from par_export.processing import ModelInputs

    tokenizer = qwen_word_tokenizer(vocabulary())
    tokenizer.save_pretrained(tmp_path)
    save_qwen_image_processor(tmp_path, **qwen.PROCESSOR)
    inputs = ModelInputs.from_folder(tmp_path, "<|image_pad|>")
    conversations = qwen.qwen_conversations(tokenizer)
    s = sample(5, sizes=True)
    n = inputs.encode([s.question], [render(s)])["input_ids"][0].tolist().count(conversations.image_id)
    ids, labels, asks = conversations.build(s.objects, random.Random(0), 1, n)
    (position, _, _), = asks
    vision_end, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_end|>", "<|im_end|>"))
    question = tokenizer.decode(ids[ids.index(vision_end) + 1:ids.index(im_end)])  # the one build drew
    stock = inputs.encode([question], [render(s)])["input_ids"][0].tolist()
    assert ids[:position + 1] == stock  # everything up to the token that predicts the answer
    assert ids[position + 1:] == labels[position + 1:] and labels[position + 1:][-1] == tokenizer.eos_token_id

    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)  # 8 x 12 patches of 4 px
    processor = transformers.Qwen2VLImageProcessorPil(**qwen.PROCESSOR)
    patches = processor(images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
    normalized = (image / 255.0 - np.array(processor.image_mean)) / np.array(processor.image_std)
    raster = normalized.reshape(8, 4, 12, 4, 3).transpose(0, 2, 4, 1, 3).reshape(96, 3, 4, 4)
    first_frame = patches.reshape(96, 3, 2, 4, 4)[:, :, 0]
    np.testing.assert_allclose(first_frame, raster[qwen.processor_order(8, 12)], atol=1e-5)
    assert not np.allclose(first_frame, raster, atol=1e-2)  # the raster order itself is not the processor's
