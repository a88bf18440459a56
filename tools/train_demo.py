#!/usr/bin/env python3
"""Train the embedded demo VLM from scratch on this CPU, in four stages:

1. the CLIP-architecture vision tower, densely: colour, shape and object centre under each
   patch, and the patch's row and column, read from the feature layer LLaVA uses (-2);
2. its features cached once for the training scenes (the tower is frozen from here on, as
   LLaVA-1.5 freezes CLIP);
3. projector + Llama on the procedural VQA as multi-turn conversations (1-6 questions per
   image) on the image's object patches (about 56 tokens, so steps are cheap) and up to 64
   random background patches, with one attention head supervised to look up, from each answer
   position, the objects its question names (or, for counting, to spread over a sink token
   and the counted objects' centres); the model is evaluated, and used, on all 256 tokens;
4. a CLIP text tower + visual projection aligned to the frozen tower's patch tokens: each text
   (a rewritten question as PAR queries it, or a caption) is contrasted over the patches of
   its image, the patches of the objects it names being the positives.

Written as Hugging Face folders (safetensors + tokenizer.json):

    python tools/train_demo.py --out par_export/assets/demo

Not run in CI. Prints progress, validation accuracy per question type (all 256 tokens, through
the saved model's own forward) and the wall time.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from par_export.data.images import normalize
from par_export.data.vqa import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    make_question,
    make_scene,
    render,
    sample,
    split_seeds,
    vocabulary,
)
from par_export.files import atomic_folder
from par_export.models.demo import CLIP_SPECIAL, IMAGE_SIZE, PATCH, demo_clip_config, demo_llava_config
from par_export.models.tiny import SPECIAL, llava_processor, word_tokenizer
from par_export.reduce.prompt import rewrite_prompt

SIDE = IMAGE_SIZE // PATCH  # 16 x 16 patches
TRAIN_SEEDS = 900_000  # scenes are drawn from [0, TRAIN_SEEDS) of the train split


def pixels(samples) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(np.asarray(render(s))) for s in samples]))


def patch_targets(objects, cell: int = PATCH, width: int = IMAGE_SIZE, height: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Per ``cell``-pixel patch of a ``width x height`` scene, raster order ``[rows * cols]``:
    colour and shape class of the object covering its centre (0 = background), 1 at each
    object's centre patch, and ``owner`` (object index, -1 for none) of the patches within 1.2
    radii of an object (its "foreground")."""
    rows, cols = height // cell, width // cell
    cx, cy = (np.arange(cols) + 0.5) * cell, (np.arange(rows) + 0.5) * cell
    color, shape, center = (np.zeros((rows, cols), np.int64) for _ in range(3))
    owner = np.full((rows, cols), -1, np.int64)
    colors = list(COLORS)
    for i, o in enumerate(objects):
        dx, dy = np.abs(cx[None, :] - o.x), np.abs(cy[:, None] - o.y)
        dist = np.hypot(dx, dy)
        inside = np.maximum(dx, dy) <= o.radius * 0.9 if o.shape == "square" else dist <= o.radius * 0.8
        color[inside], shape[inside] = 1 + colors.index(o.color), 1 + SHAPES.index(o.shape)
        center[min(int(o.y // cell), rows - 1), min(int(o.x // cell), cols - 1)] = 1
        owner[(dist <= o.radius * 1.2) & (owner < 0)] = i
    return {k: v.reshape(-1) for k, v in dict(color=color, shape=shape, center=center, owner=owner).items()}


def schedule(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up, then cosine from 1 to 0.1 over the stage's time budget."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Stage:
    """A time-budgeted training loop: ``for step, progress in Stage(minutes): ...``."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60

    def __iter__(self):
        start, step = time.time(), 0
        while (elapsed := time.time() - start) < self.seconds:
            yield step, elapsed / self.seconds
            step += 1


def pretrain_tower(tower, minutes: float, batch: int, log) -> None:
    """Dense supervision of the tower's feature layer (-2): what CLIP pretraining gives a real
    tower, object by object. Background patches weigh less than object patches."""
    hidden = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"color": torch.nn.Linear(hidden, 1 + len(COLORS)),
                                 "shape": torch.nn.Linear(hidden, 1 + len(SHAPES)),
                                 "center": torch.nn.Linear(hidden, 2),
                                 "row": torch.nn.Linear(hidden, SIDE), "col": torch.nn.Linear(hidden, SIDE)})
    weights = {"color": torch.tensor([0.1] + [1.0] * len(COLORS)), "shape": torch.tensor([0.1] + [1.0] * len(SHAPES)),
               "center": torch.tensor([0.2, 1.0])}
    grid = torch.arange(SIDE * SIDE)
    position = {"row": grid // SIDE, "col": grid % SIDE}
    params = list(tower.parameters()) + list(heads.parameters())
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    rng = random.Random(2)
    tower.train()
    for step, progress in Stage(minutes):
        samples = [sample(rng.randrange(TRAIN_SEEDS)) for _ in range(batch)]
        targets = [patch_targets(s.objects) for s in samples]
        labels = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in weights}
        labels.update({k: v.expand(batch, -1) for k, v in position.items()})
        for group in optim.param_groups:
            group["lr"] = 1e-3 * schedule(step, 50, progress)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = tower(pixels(samples), output_hidden_states=True).hidden_states[-2][:, 1:]
            logits = {k: head(features).float() for k, head in heads.items()}
        loss = sum(F.cross_entropy(logits[k].flatten(0, 1), labels[k].flatten(), weight=weights.get(k))
                   * (0.5 if k in position else 1.0) for k in logits)
        update(optim, loss, params)
        if step % 50 == 0:
            log_tower(log, step, loss, logits, labels)
    tower.eval()


def update(optim, loss: torch.Tensor, params) -> None:
    """One optimizer step on ``loss``, gradients clipped to norm 1."""
    optim.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optim.step()


def log_tower(log, step: int, loss: torch.Tensor, logits: dict, labels: dict) -> None:
    """The tower's loss and its colour and shape accuracy on object patches (label > 0)."""
    fg = labels["color"] > 0
    acc = {k: (logits[k].argmax(-1) == labels[k])[fg].float().mean().item() for k in ("color", "shape")}
    log(f"tower step {step} loss {loss.item():.3f} object-patch colour {acc['color']:.3f} shape {acc['shape']:.3f}")


@torch.no_grad()
def cache_features(tower, seeds, log) -> torch.Tensor:
    """``[S, SIDE * SIDE, D]`` bf16 feature-layer tokens of the scenes of ``seeds``."""
    out = []
    for i in range(0, len(seeds), 64):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = tower(pixels([sample(s) for s in seeds[i:i + 64]]), output_hidden_states=True).hidden_states
        out.append(hidden[-2][:, 1:].to(torch.bfloat16))
        if i % 6400 == 0:
            log(f"cached {i + len(out[-1])}/{len(seeds)} scenes")
    return torch.cat(out)


class Conversations:
    """Multi-turn VQA token rows for a cached scene, in a checkpoint's chat format: ``head`` (ids
    before the image tokens), then per turn ``next_turn`` (from the second turn on) and
    ``question`` (``{question}`` filled in), the answer and ``eos``. The defaults are the LLaVA
    demo's format, the one ``par-export eval`` prompts it with."""

    def __init__(self, tokenizer, image_id: int, head: list[int] | None = None, after_image: str = "",
                 next_turn: str = "USER :", question: str = "{question} ASSISTANT :"):
        self.tok, self.image_id = tokenizer, image_id
        self.head = tokenizer("USER :")["input_ids"] if head is None else head  # <s> USER :
        self.after_image, self.next_turn, self.question = after_image, next_turn, question
        self.eos = tokenizer.eos_token_id

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def build(self, objects, rng: random.Random, turns: int, image_tokens: int):
        """``(ids, labels, asks)``: ``asks`` holds, per turn, the position whose logits give the
        answer's first token, the indices of the objects the answer depends on and the
        question type."""
        ids = self.head + [self.image_id] * image_tokens + self.ids(self.after_image)
        labels = [-100] * len(ids)
        asks = []
        for turn in range(turns):
            posed = None
            while posed is None:
                kind = rng.choice(QUESTION_TYPES)
                posed = make_question(rng, objects, kind)
            question, answer, target = posed
            prompt = (self.ids(self.next_turn) if turn else []) + self.ids(self.question.format(question=question))
            reply = self.ids(answer) + [self.eos]
            ids += prompt
            asks.append((len(ids) - 1, target, kind))
            ids += reply
            labels += [-100] * len(prompt) + reply
        return ids, labels, asks


def pad_right(rows, pad_id: int):
    length = max(len(row[0]) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (ids, lab, *_) in enumerate(rows):
        input_ids[b, :len(ids)], labels[b, :len(lab)], mask[b, :len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    return input_ids, labels, mask


def retrieval_loss(attention: torch.Tensor, input_ids: torch.Tensor, rows, token_owners, token_centres,
                   image_id: int) -> torch.Tensor:
    """Teaches one head, at each answer position, the lookup its question needs:

    - a question about given objects: all attention on their patches (``-log`` of that mass);
    - "how many" and an "is there" with no such object: attention spread evenly over the
      first token (``<s>``, a sink) and the centre patch of each object counted, so that the
      share left on the sink, ``1 / (n + 1)``, says how many there are (cross-entropy).

    attention: ``[B, T, T]`` probabilities of one head; token_owners / token_centres: per row,
    ``[N_b]`` object index of each image token (-1 for background) / whether it is an object's
    centre patch, in sequence order.
    """
    terms = []
    for b, (_, _, asks) in enumerate(rows):
        image_positions = (input_ids[b] == image_id).nonzero().squeeze(1)
        for position, target, kind in asks:
            on_target = torch.isin(token_owners[b], torch.tensor(target, dtype=torch.long))
            if kind == "count" or not target:
                keys = torch.cat([torch.zeros(1, dtype=torch.long), image_positions[on_target & token_centres[b]]])
                terms.append(-torch.log(attention[b, position, keys].float().clamp_min(1e-6)).mean())
            else:
                terms.append(-torch.log(attention[b, position, image_positions[on_target]].float().sum()
                                        .clamp_min(1e-6)))
    return torch.stack(terms).mean()


def image_tokens_kept(owner: torch.Tensor, rng: random.Random, background: int) -> torch.Tensor:
    """``[N]`` bool: an image's object patches (``owner >= 0``) and a random number, up to
    ``background``, of its background patches, so that the model also learns to look past
    background tokens (at inference all 256 are there; a count read from attention shares drifts
    when background tokens draw some of it)."""
    keep = owner >= 0
    others = (~keep).nonzero().squeeze(1).tolist()
    chosen = rng.sample(others, k=min(rng.randint(0, background), len(others)))
    keep[chosen] = True
    return keep


def train_vqa(model, features, scenes, owners, centres, minutes: float, batch: int, lr: float, object_only: float,
              conversations: Conversations, log, on_checkpoint=None, retrieval_weight: float = 0.0,
              retrieval_layer: int = 1, background: int = 0) -> None:
    """Projector + language model on cached features (the tower stays frozen). A fraction
    ``object_only`` of the batches keep each image's object patches plus up to ``background``
    random background patches (:func:`image_tokens_kept`); the others keep all 256. With
    ``retrieval_weight``, head 0 of ``retrieval_layer`` is also taught, from each answer position,
    the lookup its question needs (:func:`retrieval_loss`): the step that conjunctive questions (a
    colour *and* a shape) and counting otherwise take thousands of steps to find."""
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    embed, projector = model.get_input_embeddings(), model.model.multi_modal_projector
    if retrieval_weight:
        model.set_attn_implementation("eager")  # attention probabilities are only returned by eager
    rng = random.Random(1)
    model.train()
    last = time.time()
    for step, progress in Stage(minutes):
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        if rng.random() < object_only:
            keep = [image_tokens_kept(owners[j], rng, background) for j in idx]
        else:
            keep = [torch.ones_like(owners[j], dtype=torch.bool) for j in idx]
        tokens = [features[j][k] for j, k in zip(idx, keep)]
        rows = [conversations.build(scenes[j], rng, rng.randint(1, 6), len(t)) for j, t in zip(idx, tokens)]
        input_ids, labels, mask = pad_right(rows, 0)
        for group in optim.param_groups:
            group["lr"] = lr * schedule(step, 100, progress)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeds = embed(input_ids).clone()
            embeds[input_ids == conversations.image_id] = projector(torch.cat(tokens)).to(embeds.dtype)
            out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                        output_attentions=bool(retrieval_weight))
        loss = out.loss
        if retrieval_weight:
            lookup = retrieval_loss(out.attentions[retrieval_layer][:, 0], input_ids, rows,
                                    [owners[j][k] for j, k in zip(idx, keep)],
                                    [centres[j][k] for j, k in zip(idx, keep)], conversations.image_id)
            loss = loss + retrieval_weight * lookup
        update(optim, loss, params)
        if step % 100 == 0:
            extra = f" retrieval {lookup.item():.3f}" if retrieval_weight else ""
            log(f"vqa step {step} loss {out.loss.item():.3f}{extra}")
        if on_checkpoint and time.time() - last > 600:
            model.eval()
            on_checkpoint()
            model.train()
            last = time.time()
    if retrieval_weight:
        model.set_attn_implementation("sdpa")
    model.eval()


def clip_texts(s, rng: random.Random) -> tuple[str, tuple[int, ...]] | None:
    """A text about the scene of ``s`` and the objects it names: the sample's question as PAR
    rewrites it (when it names objects), or a caption of one or two objects."""
    if s.target and rng.random() < 0.5:
        return rewrite_prompt(s.question), s.target
    chosen = rng.sample(range(len(s.objects)), k=min(rng.randint(1, 2), len(s.objects)))
    phrases = []
    for i in chosen:
        o = s.objects[i]
        phrases.append(rng.choice([f"{o.color} {o.shape}", f"{o.color} {o.shape} at the {o.region}",
                                   f"{o.shape} at the {o.region}", f"{o.color} object"]))
    return rewrite_prompt(" , ".join(phrases)), tuple(chosen)


def train_clip(tower, features, seeds, minutes: float, batch: int, vocab: list[str], log):
    """CLIP whose vision model is ``tower`` (frozen); the text tower, text and visual projections
    and the temperature are trained: each text against the patches of its own image."""
    from transformers import CLIPModel

    tokenizer = word_tokenizer(append_eos=True, words=vocab, specials=CLIP_SPECIAL)
    model = CLIPModel(demo_clip_config(len(CLIP_SPECIAL) + len(vocab)))
    model.vision_model.load_state_dict(tower.state_dict())
    model.vision_model.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    rng = random.Random(3)
    model.train()
    for step, progress in Stage(minutes):
        idx = [rng.randrange(len(seeds)) for _ in range(batch)]
        samples = [sample(seeds[j]) for j in idx]
        texts, positives = zip(*[clip_texts(s, rng) for s in samples])
        owner = torch.from_numpy(np.stack([patch_targets(s.objects)["owner"] for s in samples]))
        positive = torch.stack([torch.isin(owner[b], torch.tensor(list(p))) for b, p in enumerate(positives)])
        for group in optim.param_groups:
            group["lr"] = 1e-3 * schedule(step, 50, progress)
        encoded = tokenizer(list(texts), padding=True, return_tensors="pt")
        query = model.text_projection(model.text_model(**encoded).pooler_output)
        patches = model.visual_projection(model.vision_model.post_layernorm(features[idx].float()))
        logits = model.logit_scale.exp() * torch.einsum("bd,bnd->bn", F.normalize(query, dim=-1),
                                                        F.normalize(patches, dim=-1))
        loss = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e4), 1)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 50 == 0:
            top = logits.argmax(1)
            hit = positive[torch.arange(batch), top].float().mean().item()
            log(f"clip step {step} loss {loss.item():.3f} top patch on a named object {hit:.2f}")
    return model.eval(), tokenizer


@torch.no_grad()
def accuracy(model, tokenizer, seeds, batch: int = 50) -> tuple[float, dict[str, float]]:
    """First answer token, greedy, with all 256 tokens through the model's own forward (left
    padded, as ``par-export eval`` prompts it); overall and per question type."""
    image_id = model.config.image_token_id
    hits, counts = {}, {}
    for i in range(0, len(seeds), batch):
        samples = [sample(s) for s in seeds[i:i + batch]]
        rows = [tokenizer("USER :")["input_ids"] + [image_id] * SIDE * SIDE
                + tokenizer(f"{s.question} ASSISTANT :", add_special_tokens=False)["input_ids"] for s in samples]
        length = max(map(len, rows))
        input_ids = torch.zeros((len(rows), length), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, row in enumerate(rows):
            input_ids[b, length - len(row):], mask[b, length - len(row):] = torch.tensor(row), 1
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels(samples)).logits[:, -1]
        count_hits(hits, counts, samples, logits.argmax(-1).tolist(), tokenizer)
    return sum(hits.values()) / len(seeds), {k: round(hits[k] / counts[k], 3) for k in sorted(counts)}


def count_hits(hits: dict, counts: dict, samples, tokens: list[int], tokenizer) -> None:
    """Per question type: answers whose first token is ``tokens[i]`` (hits) and questions (counts)."""
    for s, token in zip(samples, tokens):
        answer = tokenizer(s.answer, add_special_tokens=False)["input_ids"][0]
        hits[s.kind] = hits.get(s.kind, 0) + int(token == answer)
        counts[s.kind] = counts.get(s.kind, 0) + 1


def save(folder: Path, model, tokenizer_or_processor) -> None:
    """The model and its tokenizer (CLIP) or processor (LLaVA: image processor, tokenizer, chat template)."""
    with atomic_folder(folder, overwrite=True) as (final, _):
        model.save_pretrained(final, safe_serialization=True)
        tokenizer_or_processor.save_pretrained(final)


def main() -> None:
    from transformers import LlavaForConditionalGeneration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="par_export/assets/demo")
    parser.add_argument("--tower-minutes", type=float, default=10)
    parser.add_argument("--scenes", type=int, default=30_000, help="training scenes whose features are cached")
    parser.add_argument("--vqa-minutes", type=float, default=38)
    parser.add_argument("--vqa-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--object-only", type=float, default=1.0, help="fraction of VQA batches that keep the "
                        "object patches of each image (plus --background ones), the rest all 256 (batches with all "
                        "256 tokens slowed learning down)")
    parser.add_argument("--background", type=int, default=64, help="object-patch batches also keep up to this "
                        "many random background patches of each image (0: object patches only; counting then "
                        "drifted on all 256 tokens)")
    parser.add_argument("--retrieval", type=float, default=1.0, help="weight of the attention-supervision loss "
                        "that teaches one head the lookup each question needs (0: answers only)")
    parser.add_argument("--init-std", type=float, default=0.07, help="init std of projector and LM: about "
                        "1/sqrt(hidden); the 0.02 of large models left attention uniform for thousands of steps")
    parser.add_argument("--clip-minutes", type=float, default=4)
    parser.add_argument("--clip-batch", type=int, default=64)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--resume", help="a folder this script wrote: continue the VQA stage from its llava/ (the "
                        "tower pretraining is skipped, its frozen tower reused)")
    parser.add_argument("--fresh-lm", action="store_true", help="with --resume: keep only the tower, start "
                        "projector and language model from scratch")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - began) / 60:5.1f} min] {message}", flush=True)

    vocab = vocabulary()
    tokenizer = word_tokenizer(append_eos=False, words=vocab)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision_config = demo_clip_config(len(CLIP_SPECIAL) + len(vocab)).vision_config
    config = demo_llava_config(vision_config, len(SPECIAL) + len(vocab), image_id)
    config.initializer_range = config.text_config.initializer_range = args.init_std
    if args.resume:
        model = LlavaForConditionalGeneration.from_pretrained(Path(args.resume) / "llava", local_files_only=True,
                                                              use_safetensors=True)
        if args.fresh_lm:
            tower_state = model.model.vision_tower.state_dict()
            model = LlavaForConditionalGeneration(config)
            model.model.vision_tower.load_state_dict(tower_state)
        tower = model.model.vision_tower
        log(f"resumed from {args.resume}/llava")
    else:
        model = LlavaForConditionalGeneration(config)
        tower = model.model.vision_tower
        pretrain_tower(tower, args.tower_minutes, 32, log)
    seeds = list(range(args.scenes))
    scenes = [make_scene(random.Random(s))[0] for s in seeds]  # the objects of sample(s), without a question
    features = cache_features(tower, seeds, log)
    targets = [patch_targets(objects) for objects in scenes]
    owners = torch.from_numpy(np.stack([t["owner"] for t in targets]))
    centres = torch.from_numpy(np.stack([t["center"] for t in targets])).bool()
    log(f"{args.scenes} scenes cached; {float((owners >= 0).float().sum(1).mean()):.0f} object patches per image")

    val_seeds = list(split_seeds("val", args.val))
    processor = llava_processor(tokenizer, IMAGE_SIZE, PATCH)

    def checkpoint() -> None:
        score, per_kind = accuracy(model, tokenizer, val_seeds[:200])
        log(f"val accuracy (200 samples, 256 tokens): {score:.3f} {per_kind}")
        save(out / "llava", model, processor)

    train_vqa(model, features, scenes, owners, centres, args.vqa_minutes, args.vqa_batch, args.lr, args.object_only,
              Conversations(tokenizer, image_id), log, on_checkpoint=checkpoint, retrieval_weight=args.retrieval,
              background=args.background)
    score, per_kind = accuracy(model, tokenizer, val_seeds)
    log(f"final val accuracy ({len(val_seeds)} samples, 256 tokens): {score:.3f} {per_kind}")
    save(out / "llava", model, processor)
    log("saved LLaVA")

    if args.clip_minutes <= 0 and (out / "clip").is_dir():
        log(f"kept {out / 'clip'} (its tower is this model's: --resume does not change the tower)")
        return
    clip, clip_tokenizer = train_clip(tower, features, seeds, args.clip_minutes, args.clip_batch, vocab, log)
    save(out / "clip", clip, clip_tokenizer)
    log(f"saved CLIP; total {(time.time() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
