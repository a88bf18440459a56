"""Procedural VQA: scenes of 6-16 coloured shapes on textured backgrounds, questions whose
answer depends on one or a few objects, one-word answers, captions. Deterministic per seed.

Splits are seed ranges: train ``[0, 1e6)``, val ``[1e6, 1.1e6)``, test ``[2e6, 2.1e6)``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from par_export.errors import ParExportError

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "orange": (240, 130, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
REGIONS = ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = {"train": (0, 1_000_000), "val": (1_000_000, 1_100_000), "test": (2_000_000, 2_100_000)}
QUESTION_TYPES = ("color", "exists", "count", "side", "shape")
IMAGE_SIZE = 128
# (width, height) in pixels of the scenes a dynamic-resolution model (demo-qwen) sees: about
# 128 x 128 pixels each, multiples of 8 (its 2x2 merge of 4-pixel patches), so its processor
# keeps them as drawn and gives grids of 16x16, 20x13, 13x20, 24x11, 11x24, 18x14 and 14x18 tokens
SCENE_SIZES = ((128, 128), (160, 104), (104, 160), (192, 88), (88, 192), (144, 112), (112, 144))


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    x: float  # center, pixels
    y: float
    radius: float
    width: int = IMAGE_SIZE  # of its scene, pixels: regions are thirds of it, sides halves
    height: int = IMAGE_SIZE

    @property
    def region(self) -> str:
        col = min(int(self.x / self.width * 3), 2)
        row = min(int(self.y / self.height * 3), 2)
        return REGIONS[row * 3 + col]

    @property
    def side(self) -> str:
        return "left" if self.x < self.width / 2 else "right"


@dataclass(frozen=True)
class Sample:
    seed: int
    objects: tuple[Shape, ...]
    background: tuple[int, int, int, int]  # base grey, stripe period, stripe angle index, noise seed
    question: str
    answer: str
    kind: str
    caption: str
    target: tuple[int, ...]  # indices of the objects the answer depends on

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the scene in pixels."""
        return (self.objects[0].width, self.objects[0].height) if self.objects else (IMAGE_SIZE, IMAGE_SIZE)


def scene_size(seed: int, sizes: bool) -> tuple[int, int]:
    """``(width, height)`` of the scene of ``seed``: 128 x 128, or with ``sizes`` one of
    :data:`SCENE_SIZES`, drawn from the seed apart from the scene itself (so the square scenes
    stay as they were)."""
    return random.Random(f"size-{seed}").choice(SCENE_SIZES) if sizes else (IMAGE_SIZE, IMAGE_SIZE)


def make_scene(rng: random.Random, width: int = IMAGE_SIZE,
               height: int = IMAGE_SIZE) -> tuple[tuple[Shape, ...], tuple[int, int, int, int]]:
    count = rng.randint(6, 16)
    objects: list[Shape] = []
    for _ in range(400):
        if len(objects) == count:
            break
        r = rng.uniform(6.0, 11.0)
        x, y = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        if all(math.hypot(x - o.x, y - o.y) > r + o.radius + 2 for o in objects):
            objects.append(Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), x, y, r, width, height))
    background = (rng.randint(90, 170), rng.randint(6, 16), rng.randint(0, 3), rng.randint(0, 2**31 - 1))
    return tuple(objects), background


def _unique(objects, key) -> list[int]:
    keys = [key(o) for o in objects]
    return [i for i, k in enumerate(keys) if keys.count(k) == 1]


def _pick_unique(rng: random.Random, objects, key) -> int | None:
    """Index of a random object that ``key`` identifies uniquely in the scene, or None."""
    options = _unique(objects, key)
    return rng.choice(options) if options else None


def make_question(rng: random.Random, objects: tuple[Shape, ...], kind: str) -> tuple[str, str, tuple[int, ...]] | None:
    """(question, answer, target object indices), or None when this scene cannot pose ``kind``."""
    if kind == "color":
        i = _pick_unique(rng, objects, lambda o: (o.shape, o.region))
        if i is None:
            return None
        o = objects[i]
        return f"what color is the {o.shape} at the {o.region} ?", o.color, (i,)
    if kind == "exists":
        present = {(o.shape, o.color) for o in objects}
        if rng.random() < 0.5:  # half the questions ask about a present object, half about an absent one
            shape, color = rng.choice(sorted(present))
        else:
            absent = sorted({(sh, c) for sh in SHAPES for c in COLORS} - present)
            shape, color = rng.choice(absent)
        hits = tuple(i for i, o in enumerate(objects) if (o.shape, o.color) == (shape, color))
        return f"is there a {color} {shape} ?", "yes" if hits else "no", hits
    if kind == "count":  # shapes with at most nine instances (one-word answers); one always exists
        shape = rng.choice([s for s in SHAPES if sum(o.shape == s for o in objects) < len(NUMBERS)])
        hits = tuple(i for i, o in enumerate(objects) if o.shape == shape)
        return f"how many {shape}s are there ?", NUMBERS[len(hits)], hits
    if kind == "side":
        i = _pick_unique(rng, objects, lambda o: (o.color, o.shape))
        if i is None:
            return None
        o = objects[i]
        return f"which side is the {o.color} {o.shape} on ?", o.side, (i,)
    if kind == "shape":
        i = _pick_unique(rng, objects, lambda o: o.color)
        if i is None:
            return None
        return f"what shape is the {objects[i].color} object ?", objects[i].shape, (i,)
    raise ParExportError(f"unknown question type {kind!r}; expected one of {QUESTION_TYPES}")


def caption(rng: random.Random, objects: tuple[Shape, ...]) -> str:
    """Two objects of the scene with colour, shape and region (for contrastive training): short
    object-level text, the kind of query PAR retrieves with."""
    chosen = rng.sample(list(objects), k=min(2, len(objects)))
    return " , ".join(f"{o.color} {o.shape} at the {o.region}" for o in chosen)


def sample(seed: int, kind: str | None = None, sizes: bool = False) -> Sample:
    """The sample of ``seed`` (a question type drawn from the seed unless ``kind`` is given);
    ``sizes``: the scene in one of :data:`SCENE_SIZES` (:func:`scene_size`), else 128 x 128."""
    rng = random.Random(seed)
    objects, background = make_scene(rng, *scene_size(seed, sizes))
    kinds = [kind] if kind else rng.sample(QUESTION_TYPES, k=len(QUESTION_TYPES))
    for k in kinds:
        posed = make_question(rng, objects, k)
        if posed is not None:
            question, answer, target = posed
            return Sample(seed, objects, background, question, answer, k, caption(rng, objects), target)
    question, answer, target = make_question(rng, objects, "count")  # always posable
    return Sample(seed, objects, background, question, answer, "count", caption(rng, objects), target)


def split_seeds(split: str, n: int, offset: int = 0) -> range:
    if split not in SPLITS:
        raise ParExportError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    low, high = SPLITS[split]
    if n > high - low:
        raise ParExportError(f"split {split} has {high - low} samples, asked for {n}")
    return range(low + offset, low + offset + n)


def _star(x: float, y: float, r: float) -> list[tuple[float, float]]:
    return [(x + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             y - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]


def render(s: Sample, size: int | None = None) -> Image.Image:
    """The scene as an RGB image of its own size (``size``: resized to ``size x size``):
    striped, noisy grey background, then the shapes."""
    grey, period, angle, noise_seed = s.background
    width, height = s.size
    yy, xx = np.mgrid[0:height, 0:width]
    direction = (xx, yy, xx + yy, xx - yy)[angle]
    stripes = ((direction // period) % 2) * 18.0
    noise = np.random.default_rng(noise_seed).normal(0, 10, (height, width, 1))
    base = np.clip(grey + stripes[..., None] + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for o in s.objects:
        fill, box = COLORS[o.color], (o.x - o.radius, o.y - o.radius, o.x + o.radius, o.y + o.radius)
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(o.x, o.y - o.radius), (o.x - o.radius, o.y + o.radius), (o.x + o.radius, o.y + o.radius)],
                         fill=fill)
        else:
            draw.polygon(_star(o.x, o.y, o.radius * 1.2), fill=fill)
    return image if size is None or (size, size) == s.size else image.resize((size, size), Image.BICUBIC)


def vocabulary() -> list[str]:
    """Every word of questions, answers, captions and the chat template."""
    words = ["USER", "ASSISTANT", ":", "?", ",", "a", "an", "the", "at", "of", "is", "are", "there", "what",
             "which", "how", "many", "color", "shape", "side", "on", "object", "photo", "yes", "no", "left", "right"]
    words += list(COLORS) + list(SHAPES) + [f"{s}s" for s in SHAPES] + list(NUMBERS)
    words += [w for region in REGIONS for w in region.split()]
    return list(dict.fromkeys(words))
