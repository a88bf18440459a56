#!/usr/bin/env python3
"""Train demo-qwen, the embedded Qwen2.5-VL-architecture demo, from scratch on this CPU:

1. the vision tower (window attention, full-attention blocks 1 and 3, 2D RoPE, no absolute
   position embedding), densely: colour, shape and object centre under each 4-pixel patch. No
   row or column target: as in Qwen2.5-VL, where a token sits reaches the LLM through its
   M-RoPE (t, h, w) position, which is what the position questions and the position ablation
   (``par:positions=sequential``) test;
2. the tower's last-block output cached once for the training scenes (frozen from here on);
3. merger + Qwen2 LLM on the procedural VQA as multi-turn chats in the checkpoint's own chat
   format, on each image's object tokens plus up to 64 random background tokens, every kept
   token at its stock M-RoPE position (as PAR keeps them), with two auxiliary losses: one
   attention head (layer 2, head 0) taught the lookup each question needs (as
   ``tools/train_demo.py`` does), and a linear probe reading each image token's merged-grid row
   and column from the hidden state after layer 1, which the LLM can only compute from M-RoPE.

The scenes come in the seven sizes of ``par_export.data.vqa.SCENE_SIZES`` (about 128 x 128
pixels, aspect ratios 0.46-2.2), so the image processor's dynamic resolution gives grids from
11 x 24 to 24 x 11 merged tokens (about 256 per scene).

Written as one Hugging Face folder (safetensors, tokenizer.json with the chat template, the
Qwen2-VL image processor):

    python tools/train_demo_qwen.py --out par_export/assets/demo/qwen

Not run in CI. Prints progress, validation accuracy per question type (all tokens, through the
saved model's own forward and processor) and the wall time.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo import (  # noqa: E402
    Conversations,
    Stage,
    count_hits,
    image_tokens_kept,
    log_tower,
    pad_right,
    patch_targets,
    retrieval_loss,
    schedule,
    update,
)

from par_export.data.vqa import (  # noqa: E402
    COLORS,
    SHAPES,
    make_scene,
    render,
    sample,
    scene_size,
    split_seeds,
    vocabulary,
)
from par_export.files import atomic_folder  # noqa: E402
from par_export.models.demo import (  # noqa: E402
    QWEN_MAX_PIXELS,
    QWEN_MERGE,
    QWEN_MIN_PIXELS,
    QWEN_PATCH,
    demo_qwen_config,
)
from par_export.models.qwen2_5_vl import ReducedQwen2_5_VL  # noqa: E402
from par_export.models.tiny import qwen_word_tokenizer, save_qwen_image_processor  # noqa: E402
from par_export.processing import ModelInputs  # noqa: E402

CELL = QWEN_PATCH * QWEN_MERGE  # pixels per merged token
TRAIN_SEEDS = 900_000
MAX_SIDE = 32  # probe classes: merged-grid rows / columns (the largest scene has 24)
PROCESSOR = dict(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=2, min_pixels=QWEN_MIN_PIXELS,
                 max_pixels=QWEN_MAX_PIXELS)


def processor_order(rows: int, cols: int) -> np.ndarray:
    """``[rows * cols]`` raster indices of a patch grid in the image processor's patch order
    (2 x 2 merge blocks in raster order, each block's four patches in raster order)."""
    grid = np.arange(rows * cols).reshape(rows // QWEN_MERGE, QWEN_MERGE, cols // QWEN_MERGE, QWEN_MERGE)
    return grid.transpose(0, 2, 1, 3).reshape(-1)


def tower_inputs(image_processor, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values [sum patches, 96]`` and ``image_grid_thw [B, 3]`` from the image processor."""
    out = image_processor(images=[render(s) for s in samples], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def tower_tokens(tower, pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The last block's output ``[sum patches, D]`` in the image processor's patch order (the
    tower runs in window order and only its merger output is put back in the stock model)."""
    hidden = tower(pixel_values, grid_thw=grid).last_hidden_state
    window_index, _ = transformers.vision_utils.get_vision_window_index(
        grid, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
        patch_size=tower.patch_size)
    unit = tower.spatial_merge_size ** 2
    return hidden.view(-1, unit, hidden.shape[-1])[torch.argsort(window_index)].view(-1, hidden.shape[-1])


def pretrain_tower(tower, image_processor, minutes: float, batch: int, log) -> None:
    """Dense supervision of the last block (what pretraining gives a real tower), per patch:
    colour, shape, object centre. Background patches weigh less than object patches."""
    hidden = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"color": torch.nn.Linear(hidden, 1 + len(COLORS)),
                                 "shape": torch.nn.Linear(hidden, 1 + len(SHAPES)),
                                 "center": torch.nn.Linear(hidden, 2)})
    weights = {"color": torch.tensor([0.1] + [1.0] * len(COLORS)), "shape": torch.tensor([0.1] + [1.0] * len(SHAPES)),
               "center": torch.tensor([0.2, 1.0])}
    params = list(tower.parameters()) + list(heads.parameters())
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    rng = random.Random(2)
    tower.train()
    for step, progress in Stage(minutes):
        samples = [sample(rng.randrange(TRAIN_SEEDS), sizes=True) for _ in range(batch)]
        pixel_values, grid = tower_inputs(image_processor, samples)
        labels = {k: [] for k in weights}
        for s in samples:
            width, height = s.size
            order = processor_order(height // QWEN_PATCH, width // QWEN_PATCH)
            for k, v in patch_targets(s.objects, QWEN_PATCH, width, height).items():
                if k in labels:
                    labels[k].append(torch.from_numpy(v[order]))
        labels = {k: torch.cat(v) for k, v in labels.items()}
        for group in optim.param_groups:
            group["lr"] = 1e-3 * schedule(step, 50, progress)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = tower_tokens(tower, pixel_values, grid)
            logits = {k: head(features).float() for k, head in heads.items()}
        loss = sum(F.cross_entropy(logits[k], labels[k], weight=weights[k]) for k in logits)
        update(optim, loss, params)
        if step % 25 == 0:
            log_tower(log, step, loss, logits, labels)
    tower.eval()


@torch.no_grad()
def cache_features(tower, image_processor, seeds, log) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Per scene: the last block's output ``[4 N, D]`` bf16 (processor order) and its merged grid ``(rows, cols)``."""
    features, grids = [], []
    for i in range(0, len(seeds), 32):
        samples = [sample(s, sizes=True) for s in seeds[i:i + 32]]
        pixel_values, grid = tower_inputs(image_processor, samples)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = tower_tokens(tower, pixel_values, grid).to(torch.bfloat16)
        features += list(torch.split(tokens, grid.prod(-1).tolist()))
        grids += [(int(h) // QWEN_MERGE, int(w) // QWEN_MERGE) for _, h, w in grid.tolist()]
        if i % 3200 == 0:
            log(f"cached {i + len(samples)}/{len(seeds)} scenes")
    return features, grids


def qwen_conversations(tokenizer) -> Conversations:
    """Multi-turn rows in the checkpoint's chat template (its text, tokenized: the newlines are
    whitespace to the word tokenizer; ``main`` checks a one-turn row against the processor's)."""
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    head = tokenizer("<|im_start|>user\n<|vision_start|>", add_special_tokens=False)["input_ids"]
    conversations = Conversations(tokenizer, image_id, head, after_image="<|vision_end|>",
                                  next_turn="<|im_start|>user\n",
                                  question="{question}<|im_end|>\n<|im_start|>assistant\n")
    conversations.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return conversations


def train_vqa(model, features, grids, scenes, owners, centres, minutes: float, batch: int, lr: float,
              conversations: Conversations, log, on_checkpoint=None, retrieval_weight: float = 1.0,
              retrieval_layer: int = 2, probe_weight: float = 0.5, probe_layer: int = 2, background: int = 64) -> None:
    """Merger + LLM on cached tower tokens (the tower stays frozen); each image keeps its object
    tokens and up to ``background`` random others, at their stock M-RoPE positions."""
    visual = model.model.visual
    visual.requires_grad_(False)
    visual.merger.requires_grad_(True)
    hidden = model.config.text_config.hidden_size
    probe = torch.nn.ModuleDict({"row": torch.nn.Linear(hidden, MAX_SIDE), "col": torch.nn.Linear(hidden, MAX_SIDE)})
    params = [p for p in model.parameters() if p.requires_grad] + list(probe.parameters())
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    embed = model.get_input_embeddings()
    positions = ReducedQwen2_5_VL(model, "par")  # the positions PAR gives kept tokens: stock (t, h, w)
    model.set_attn_implementation("eager")  # attention probabilities are only returned by eager
    rng = random.Random(1)
    model.train()
    last = time.time()
    for step, progress in Stage(minutes):
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        keep = [image_tokens_kept(owners[j], rng, background) for j in idx]
        keep_index = [k.nonzero().squeeze(1) for k in keep]
        rows = [conversations.build(scenes[j], rng, rng.randint(1, 6), len(k)) for j, k in zip(idx, keep_index)]
        input_ids, labels, mask = pad_right(rows, 0)
        grid = torch.tensor([[1, grids[j][0] * QWEN_MERGE, grids[j][1] * QWEN_MERGE] for j in idx])
        position_ids = positions.position_ids(input_ids, mask, grid, keep_index)
        for group in optim.param_groups:
            group["lr"] = lr * schedule(step, 100, progress)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            merged = visual.merger(torch.cat([features[j] for j in idx]).float())
            merged = torch.split(merged, [len(features[j]) // QWEN_MERGE ** 2 for j in idx])
            tokens = torch.cat([m[k] for m, k in zip(merged, keep_index)])
            image = input_ids == conversations.image_id
            embeds = embed(input_ids).clone()
            embeds[image] = tokens.to(embeds.dtype)
            out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels,
                        output_attentions=True, output_hidden_states=True)
            states = out.hidden_states[probe_layer][image]
            probe_logits = {k: head(states).float() for k, head in probe.items()}
        where = torch.cat([torch.stack([k // grids[j][1], k % grids[j][1]]) for j, k in zip(idx, keep_index)], dim=1)
        probe_loss = F.cross_entropy(probe_logits["row"], where[0]) + F.cross_entropy(probe_logits["col"], where[1])
        lookup = retrieval_loss(out.attentions[retrieval_layer][:, 0], input_ids, rows,
                                [owners[j][k] for j, k in zip(idx, keep)],
                                [centres[j][k] for j, k in zip(idx, keep)], conversations.image_id)
        loss = out.loss + retrieval_weight * lookup + probe_weight * probe_loss
        update(optim, loss, params)
        if step % 50 == 0:
            hit = {k: (probe_logits[k].argmax(-1) == where[i]).float().mean().item() for i, k in enumerate(("row", "col"))}
            log(f"vqa step {step} loss {out.loss.item():.3f} retrieval {lookup.item():.3f} probe row "
                f"{hit['row']:.2f} col {hit['col']:.2f}")
        if on_checkpoint and time.time() - last > 600:
            model.eval()
            on_checkpoint()
            model.train()
            last = time.time()
    model.set_attn_implementation("sdpa")
    model.eval()


@torch.no_grad()
def accuracy(model, inputs: ModelInputs, seeds, batch: int = 25) -> tuple[float, dict[str, float]]:
    """First answer token, greedy, all tokens, through the model's own forward on the processor's
    inputs (left padded, chat template); overall and per question type."""
    hits, counts = {}, {}
    for i in range(0, len(seeds), batch):
        samples = [sample(s, sizes=True) for s in seeds[i:i + batch]]
        encoded = inputs.encode([s.question for s in samples], [render(s) for s in samples])
        model.model.rope_deltas = None
        count_hits(hits, counts, samples, model(**encoded).logits[:, -1].argmax(-1).tolist(), inputs.tokenizer)
    return sum(hits.values()) / len(seeds), {k: round(hits[k] / counts[k], 3) for k in sorted(counts)}


def save(folder: Path, model, tokenizer) -> None:
    """Model, tokenizer (with the chat template) and image processor, written whole or not at all."""
    with atomic_folder(folder, overwrite=True) as (final, _):
        model.save_pretrained(final, safe_serialization=True)
        tokenizer.save_pretrained(final)
        save_qwen_image_processor(final, **PROCESSOR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="par_export/assets/demo/qwen")
    parser.add_argument("--tower-minutes", type=float, help="dense tower pretraining (default 10; 0 with --tower-from, "
                        "where it continues that tower's pretraining)")
    parser.add_argument("--tower-batch", type=int, default=16)
    parser.add_argument("--scenes", type=int, default=16_000, help="training scenes whose tower tokens are cached")
    parser.add_argument("--vqa-minutes", type=float, default=36)
    parser.add_argument("--vqa-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--background", type=int, default=64)
    parser.add_argument("--retrieval", type=float, default=1.0)
    parser.add_argument("--probe", type=float, default=0.5, help="weight of the row/column probe after layer 1")
    parser.add_argument("--init-std", type=float, default=0.07, help="init std of merger and LLM (train_demo.py)")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--tower-from", help="a folder this script wrote: start from its tower; merger and LLM start "
                        "from scratch")
    parser.add_argument("--resume", help="a folder this script wrote: continue its VQA stage (tower, merger and LLM "
                        "as saved; a fresh optimizer and schedule; no tower stage)")
    args = parser.parse_args()
    torch.manual_seed(0)
    began = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - began) / 60:5.1f} min] {message}", flush=True)

    tokenizer = qwen_word_tokenizer(vocabulary())
    if args.resume:
        model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            args.resume, local_files_only=True, use_safetensors=True)
        log(f"resumed from {args.resume}")
    else:
        config = demo_qwen_config(tokenizer.get_vocab())
        config.text_config.initializer_range = args.init_std
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    image_processor = transformers.Qwen2VLImageProcessorPil(**PROCESSOR)
    staging = Path(tempfile.mkdtemp(prefix="demo-qwen-processor-"))
    tokenizer.save_pretrained(staging)
    save_qwen_image_processor(staging, **PROCESSOR)
    inputs = ModelInputs.from_folder(staging, "<|image_pad|>")
    conversations = qwen_conversations(tokenizer)
    # the training rows are the processor's rows: same ids for a one-turn chat
    probe_sample = sample(0, sizes=True)
    stock = inputs.encode([probe_sample.question], [render(probe_sample)])["input_ids"][0].tolist()
    n = stock.count(conversations.image_id)
    ours = conversations.build(probe_sample.objects, random.Random(0), 1, n)[0]
    head = ours[:ours.index(conversations.image_id) + n + 1]
    if stock[:len(head)] != head:
        raise SystemExit(f"training rows differ from the processor's: {stock[:len(head)]} vs {head}")

    tower = model.model.visual
    if args.resume:
        tower.eval()
    elif args.tower_from:
        trained = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            args.tower_from, local_files_only=True, use_safetensors=True).model.visual.state_dict()
        tower.load_state_dict({k: v for k, v in trained.items() if not k.startswith("merger.")}, strict=False)
        tower.eval()
        log(f"tower from {args.tower_from}")
    tower_minutes = args.tower_minutes if args.tower_minutes is not None else (0 if args.tower_from or args.resume
                                                                               else 10)
    if tower_minutes > 0:
        pretrain_tower(tower, image_processor, tower_minutes, args.tower_batch, log)
    seeds = list(range(args.scenes))
    scenes = [make_scene(random.Random(s), *scene_size(s, True))[0] for s in seeds]  # sample(s, sizes=True)'s
    features, grids = cache_features(tower, image_processor, seeds, log)
    owners, centres = [], []
    for objects, (rows, cols) in zip(scenes, grids):
        targets = patch_targets(objects, CELL, cols * CELL, rows * CELL)
        owners.append(torch.from_numpy(targets["owner"]))
        centres.append(torch.from_numpy(targets["center"]).bool())
    log(f"{args.scenes} scenes cached; {float(np.mean([(o >= 0).sum() for o in owners])):.0f} object tokens "
        f"of {float(np.mean([len(o) for o in owners])):.0f} per image")

    val_seeds = list(split_seeds("val", args.val))
    out = Path(args.out)

    def checkpoint() -> None:
        score, per_kind = accuracy(model, inputs, val_seeds[:200])
        log(f"val accuracy (200 samples, all tokens): {score:.3f} {per_kind}")
        save(out, model, tokenizer)

    train_vqa(model, features, grids, scenes, owners, centres, args.vqa_minutes, args.vqa_batch, args.lr,
              conversations, log, on_checkpoint=checkpoint, retrieval_weight=args.retrieval, probe_weight=args.probe,
              background=args.background)
    score, per_kind = accuracy(model, inputs, val_seeds)
    log(f"final val accuracy ({len(val_seeds)} samples, all tokens): {score:.3f} {per_kind}")
    save(out, model, tokenizer)
    log(f"saved {out}; total {(time.time() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
