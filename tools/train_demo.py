#!/usr/bin/env python3
"""Train the embedded demo VLM from scratch on this CPU: a tiny CLIP (contrastive, on scene
captions), then a tiny LLaVA (its CLIP vision tower, the MLP projector and a small Llama)
on the procedural VQA. Writes Hugging Face folders (safetensors + tokenizer.json):

    python tools/train_demo.py --out par_export/assets/demo --clip-minutes 12 --vqa-minutes 40

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
from par_export.models.demo import demo_clip_config, demo_llava_config
from par_export.models.tiny import SPECIAL, word_tokenizer


def pixels(samples) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(np.asarray(render(s))) for s in samples]))


def prompt_ids(tokenizer, question: str, image_id: int, tokens: int) -> list[int]:
    head = tokenizer("USER :")["input_ids"]  # <s> USER :
    tail = tokenizer(f"{question} ASSISTANT :", add_special_tokens=False)["input_ids"]
    return head + [image_id] * tokens + tail


def schedule(step: int, warmup: int, progress: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_clip(minutes: float, batch: int, vocab: list[str], log) -> tuple:
    from transformers import CLIPModel

    tokenizer = word_tokenizer(append_eos=True, words=vocab)
    model = CLIPModel(demo_clip_config(len(SPECIAL) + len(vocab))).train()
    optim = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
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
def accuracy(model, tokenizer, seeds, image_id: int, tokens: int, batch: int = 50) -> float:
    """First answer token by teacher forcing (= greedy's first token) against the answer word."""
    correct = 0
    for i in range(0, len(seeds), batch):
        samples = [sample(s) for s in seeds[i : i + batch]]
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
    parser.add_argument("--clip-minutes", type=float, default=12)
    parser.add_argument("--vqa-minutes", type=float, default=40)
    parser.add_argument("--clip-batch", type=int, default=64)
    parser.add_argument("--vqa-batch", type=int, default=32)
    parser.add_argument("--val", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - began) / 60:5.1f} min] {message}", flush=True)

    vocab = vocabulary()
    clip, clip_tokenizer = train_clip(args.clip_minutes, args.clip_batch, vocab, log)
    save(out / "clip", clip, clip_tokenizer)
    log("saved CLIP")

    tokenizer = word_tokenizer(append_eos=False, words=vocab)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = demo_llava_config(clip.config.vision_config, len(SPECIAL) + len(vocab), image_id)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.train()
    tokens = config.image_seq_length
    tower = list(model.model.vision_tower.parameters())
    rest = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    optim = torch.optim.AdamW([{"params": rest, "lr": 1e-3}, {"params": tower, "lr": 3e-4}], weight_decay=0.01)
    base_lr = [1e-3, 3e-4]
    val_seeds = list(split_seeds("val", args.val))
    rng = random.Random(1)
    start, step, last_eval = time.time(), 0, time.time()
    processor = {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "image_size": config.vision_config.image_size}
    while time.time() - start < args.vqa_minutes * 60:
        samples = [sample(rng.randrange(0, 900_000)) for _ in range(args.vqa_batch)]
        input_ids, mask, labels = encode_batch(samples, tokenizer, image_id, tokens, with_answer=True)
        scale = schedule(step, 200, (time.time() - start) / (args.vqa_minutes * 60))
        for group, lr in zip(optim.param_groups, base_lr):
            group["lr"] = lr * scale
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels(samples), labels=labels).loss
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if step % 25 == 0:
            log(f"vqa step {step} loss {loss.item():.3f} ({(step + 1) * args.vqa_batch} samples)")
        if time.time() - last_eval > 8 * 60:
            model.eval()
            log(f"val accuracy (full tokens): {accuracy(model, tokenizer, val_seeds, image_id, tokens):.3f}")
            save(out / "llava", model, tokenizer, processor)
            model.train()
            last_eval = time.time()
        step += 1
    model.eval()
    log(f"final val accuracy (full tokens, {len(val_seeds)} samples): "
        f"{accuracy(model, tokenizer, val_seeds, image_id, tokens):.3f}")
    save(out / "llava", model, tokenizer, processor)
    log(f"saved LLaVA; total {(time.time() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
