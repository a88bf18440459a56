#!/usr/bin/env python3
"""Train the embedded demo VLM from scratch on this CPU: the CLIP-architecture vision tower
pretrained densely (the object under each patch), then a tiny LLaVA (that tower, the MLP
projector and a small Llama) end to end on the procedural VQA, then a
tiny CLIP around that same, frozen tower: text tower and projections trained contrastively
on scene captions (from-scratch contrastive training of both towers stayed at chance loss
for hundreds of steps on this data; aligning a text tower to a trained tower is quick).
Writes Hugging Face folders (safetensors + tokenizer.json):

    python tools/train_demo.py --out par_export/assets/demo --dense-minutes 8 --vqa-minutes 30 --clip-minutes 6

Not run in CI. Prints progress, validation accuracy (full 256 tokens) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from par_export.data.images import CLIP_MEAN, CLIP_STD, normalize
from par_export.data.vqa import render, sample, split_seeds, vocabulary
from par_export.models.demo import CLIP_SPECIAL, demo_clip_config, demo_llava_config
from par_export.models.tiny import SPECIAL, word_tokenizer


def pixels(samples) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(np.asarray(render(s))) for s in samples]))


def prompt_ids(tokenizer, question: str, image_id: int, tokens: int) -> list[int]:
    head = tokenizer("USER :")["input_ids"]  # <s> USER :
    tail = tokenizer(f"{question} ASSISTANT :", add_special_tokens=False)["input_ids"]
    return head + [image_id] * tokens + tail


def patch_labels(samples, size: int, patch: int) -> torch.Tensor:
    """``[B, (size/patch)^2]`` class of the object under each patch centre: ``1 + colour * 4 + shape``, 0 = background."""
    from par_export.data.vqa import COLORS, SHAPES

    colors, side = list(COLORS), size // patch
    centers = (np.arange(side) + 0.5) * patch
    labels = np.zeros((len(samples), side, side), np.int64)
    for b, s in enumerate(samples):
        for o in s.objects:
            dx, dy = np.abs(centers[None, :] - o.x), np.abs(centers[:, None] - o.y)
            inside = np.maximum(dx, dy) <= o.radius if o.shape == "square" else np.hypot(dx, dy) <= o.radius
            labels[b][inside] = 1 + colors.index(o.color) * len(SHAPES) + SHAPES.index(o.shape)
    return torch.from_numpy(labels.reshape(len(samples), -1))


def pretrain_tower(model, minutes: float, batch: int, log) -> None:
    """Dense pretraining of the vision tower: classify the object (colour x shape) under each patch
    from the feature layer LLaVA reads (-2). Gives the tower what CLIP pretraining gives a real one."""
    from par_export.data.vqa import COLORS, SHAPES

    tower = model.model.vision_tower
    config = tower.config
    head = torch.nn.Linear(config.hidden_size, 1 + len(COLORS) * len(SHAPES))
    optim = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.01)
    rng = random.Random(2)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        samples = [sample(rng.randrange(0, 900_000)) for _ in range(batch)]
        labels = patch_labels(samples, config.image_size, config.patch_size)
        for group in optim.param_groups:
            group["lr"] = 1e-3 * schedule(step, 50, (time.time() - start) / (minutes * 60))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = tower(pixels(samples), output_hidden_states=True).hidden_states[-2][:, 1:]
            logits = head(hidden)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 25 == 0:
            accuracy = (logits.argmax(-1) == labels).float().mean().item()
            log(f"tower step {step} loss {loss.item():.3f} patch accuracy {accuracy:.3f}")
        step += 1


def pooled_forward(model, samples, tokenizer, image_id: int, side: int, labels_too: bool = True):
    """Forward with the image's feature grid average-pooled to ``side x side`` tokens (with
    gradients through tower and projector), fed through ``mm_encoder_outputs``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = model.model.vision_tower
    hidden = tower(pixels(samples), output_hidden_states=True).hidden_states[-2][:, 1:]
    grid = int(hidden.shape[1] ** 0.5)
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        hidden.transpose(1, 2).reshape(len(samples), -1, grid, grid), side).flatten(2).transpose(1, 2)
    features = model.model.multi_modal_projector(pooled)
    input_ids, mask, labels = encode_batch(samples, tokenizer, image_id, side * side, with_answer=True)
    return model(input_ids=input_ids, attention_mask=mask, labels=labels,
                 mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=list(features))}), labels, input_ids


def schedule(step: int, warmup: int, progress: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_clip(minutes: float, batch: int, vocab: list[str], tower, log) -> tuple:
    """CLIP whose vision model is ``tower`` (frozen); text tower and projections are trained."""
    from transformers import CLIPModel

    tokenizer = word_tokenizer(append_eos=True, words=vocab, specials=CLIP_SPECIAL)
    model = CLIPModel(demo_clip_config(len(SPECIAL) + len(vocab)))
    model.vision_model.load_state_dict(tower.state_dict())
    model.vision_model.requires_grad_(False)
    model.train()
    model.vision_model.eval()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.05)
    rng = random.Random(0)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        samples = [sample(rng.randrange(0, 900_000)) for _ in range(batch)]  # train seeds
        text = tokenizer([s.caption for s in samples], padding=True, return_tensors="pt")
        for group in optim.param_groups:
            group["lr"] = 5e-4 * schedule(step, 100, (time.time() - start) / (minutes * 60))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                         pixel_values=pixels(samples), return_loss=True).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 25 == 0:
            log(f"clip step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
        step += 1
    return model.eval(), tokenizer


def encode_batch(samples, tokenizer, image_id: int, tokens: int, with_answer: bool):
    rows, labels = [], []
    for s in samples:
        ids = prompt_ids(tokenizer, s.question, image_id, tokens)
        if with_answer:
            answer = tokenizer(s.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            labels.append([-100] * len(ids) + answer)
            ids = ids + answer
        rows.append(ids)
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    label_ids = torch.full_like(input_ids, -100)
    for b, ids in enumerate(rows):  # right padding for training
        input_ids[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
        if with_answer:
            label_ids[b, : len(ids)] = torch.tensor(labels[b])
    return input_ids, mask, label_ids


@torch.no_grad()
def accuracy(model, tokenizer, seeds, image_id: int, tokens: int, batch: int = 50, kinds=None,
             pool_side: int = 0) -> float:
    """First answer token by teacher forcing (= greedy's first token) against the answer word."""
    correct = 0
    for i in range(0, len(seeds), batch):
        samples = [sample(s, kinds[s % len(kinds)] if kinds else None) for s in seeds[i : i + batch]]
        if pool_side:
            out, labels, input_ids = pooled_forward(model, samples, tokenizer, image_id, pool_side)
            logits = out.logits
        else:
            input_ids, mask, labels = encode_batch(samples, tokenizer, image_id, tokens, with_answer=True)
            logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels(samples)).logits
        first = (labels != -100).int().argmax(dim=1)  # position of the answer token
        predicted = logits[torch.arange(len(samples)), first - 1].argmax(-1)
        correct += int((predicted == input_ids[torch.arange(len(samples)), first]).sum())
    return correct / len(seeds)


def save(folder: Path, model, tokenizer, extra: dict | None = None) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if extra:
        (tmp / "preprocessor_config.json").write_text(json.dumps(extra, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def main() -> None:
    from transformers import LlavaForConditionalGeneration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="par_export/assets/demo")
    parser.add_argument("--dense-minutes", type=float, default=8)
    parser.add_argument("--vqa-minutes", type=float, default=30)
    parser.add_argument("--clip-minutes", type=float, default=8)
    parser.add_argument("--clip-batch", type=int, default=64)
    parser.add_argument("--vqa-batch", type=int, default=32)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--eval-minutes", type=float, default=8)
    parser.add_argument("--projector-scale", type=float, default=1.0, help="multiply the projector output at "
                        "init (e.g. 0.02: the text embeddings' scale)")
    parser.add_argument("--lm-lr", type=float, default=1e-3)
    parser.add_argument("--fp32", action="store_true", help="VQA stage without bf16 autocast")
    parser.add_argument("--pool-side", type=int, default=0, help="train VQA on the feature grid average-pooled "
                        "to SIDE x SIDE tokens (a curriculum probe; validation below uses the same pooling)")
    parser.add_argument("--kinds", default=None, help="comma-separated question types to train and validate on "
                        "(default: all); for curriculum experiments")
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
    vision_config = demo_clip_config(len(SPECIAL) + len(vocab)).vision_config
    config = demo_llava_config(vision_config, len(SPECIAL) + len(vocab), image_id)
    model = LlavaForConditionalGeneration(config)
    model.train()
    pretrain_tower(model, args.dense_minutes, args.vqa_batch, log)
    # The tower's feature layer is an unnormalized residual stream (std ~1) while the text
    # embeddings start at std 0.02; --projector-scale shrinks the projector's output.
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(args.projector_scale)
        model.model.multi_modal_projector.linear_2.bias.mul_(args.projector_scale)
    tokens = config.image_seq_length
    tower = list(model.model.vision_tower.parameters())
    rest = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    optim = torch.optim.AdamW([{"params": rest, "lr": args.lm_lr}, {"params": tower, "lr": 2e-4}], weight_decay=0.01)
    base_lr = [args.lm_lr, 2e-4]
    kinds = args.kinds.split(",") if args.kinds else None
    val_seeds = list(split_seeds("val", args.val))
    rng = random.Random(1)
    start, step, last_eval = time.time(), 0, time.time()
    processor = {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "image_size": config.vision_config.image_size}
    while time.time() - start < args.vqa_minutes * 60:
        samples = [sample(rng.randrange(0, 900_000), rng.choice(kinds) if kinds else None)
                   for _ in range(args.vqa_batch)]
        input_ids, mask, labels = encode_batch(samples, tokenizer, image_id, tokens, with_answer=True)
        scale = schedule(step, 200, (time.time() - start) / (args.vqa_minutes * 60))
        for group, lr in zip(optim.param_groups, base_lr):
            group["lr"] = lr * scale
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            if args.pool_side:
                loss = pooled_forward(model, samples, tokenizer, image_id, args.pool_side)[0].loss
            else:
                loss = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels(samples),
                             labels=labels).loss
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if step % 25 == 0:
            log(f"vqa step {step} loss {loss.item():.3f} ({(step + 1) * args.vqa_batch} samples)")
        if time.time() - last_eval > args.eval_minutes * 60:
            model.eval()
            score = accuracy(model, tokenizer, val_seeds, image_id, tokens, kinds=kinds, pool_side=args.pool_side)
            log(f"val accuracy: {score:.3f}")
            save(out / "llava", model, tokenizer, processor)
            model.train()
            last_eval = time.time()
        step += 1
    model.eval()
    score = accuracy(model, tokenizer, val_seeds, image_id, tokens, kinds=kinds, pool_side=args.pool_side)
    log(f"final val accuracy ({len(val_seeds)} samples): {score:.3f}")
    save(out / "llava", model, tokenizer, processor)
    log("saved LLaVA")

    clip, clip_tokenizer = train_clip(args.clip_minutes, args.clip_batch, vocab, model.model.vision_tower, log)
    save(out / "clip", clip, clip_tokenizer)
    log(f"saved CLIP; total {(time.time() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
