"""DART inside the LLM: the hooks give what running the decoder layers by hand, pruning before
layer 2 as the DART code does, gives; the selection follows ``get_retained_image_token``."""

from __future__ import annotations

import pytest
import torch

from par_export.models.dart import DartSettings, dart_first_token_logits, retained_image_tokens


def manual_dart(model, ids, mask, pixels, budget, settings=DartSettings()):
    """Embed, run layers 0..L-1 by hand, prune each sample before ``settings.layer`` (the layer
    before's RoPE'd keys and normed output), finish on the kept positions, the last logits."""
    from transformers.masking_utils import create_causal_mask
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = model.model.language_model
    embeds = model.get_input_embeddings()(ids)
    features = model.model.get_image_features(pixel_values=pixels).pooler_output
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features.flatten(0, 1)
    embeds = embeds.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), features.to(embeds.dtype))
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)  # as the model's own forward numbers them
    hidden = embeds
    causal = create_causal_mask(config=lm.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                position_ids=positions)
    cos, sin = lm.rotary_emb(hidden, position_ids=positions)
    keys_in = hidden  # the input of the layer before the one being entered
    for number, layer in enumerate(lm.layers):
        if number == settings.layer:
            attn = lm.layers[number - 1].self_attn
            b, t, _ = keys_in.shape
            k = attn.k_proj(lm.layers[number - 1].input_layernorm(keys_in)).view(b, t, -1, attn.head_dim).transpose(1, 2)
            k = apply_rotary_pos_emb(k, k, cos, sin)[1].transpose(1, 2).reshape(b, t, -1)
            normed = lm.norm(hidden)
            index = []
            for i in range(b):
                run = (ids[i] == model.config.image_token_id).nonzero().flatten()
                start, length = int(run[0]), run.numel()
                images = retained_image_tokens(k[i], normed[i], start, length, budget, settings)
                index.append(sorted([p for p in range(t) if not start <= p < start + length] + images))
            index = torch.tensor(index)
            hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            cos = torch.gather(cos.expand(b, -1, -1), 1, index.unsqueeze(-1).expand(-1, -1, cos.shape[-1]))
            sin = torch.gather(sin.expand(b, -1, -1), 1, index.unsqueeze(-1).expand(-1, -1, sin.shape[-1]))
            positions = torch.gather(positions, 1, index)
            if causal is not None:
                causal = causal[torch.arange(b)[:, None, None], :, index[:, :, None], index[:, None, :]].permute(0, 3, 1, 2)
        keys_in = hidden
        hidden = layer(hidden, attention_mask=causal, position_embeddings=(cos, sin), position_ids=positions)
    return model.lm_head(lm.norm(hidden))[:, -1]


@pytest.mark.parametrize("budget", [8, 16])
def test_dart_hooks_equal_pruning_by_hand(tiny_folders, budget):
    from test_llava import QUESTIONS, chat_batch

    from par_export.models.llava import ReducedLlava

    model = ReducedLlava.from_pretrained(tiny_folders[0], method="par", clip_path=tiny_folders[1])
    ids, mask, pixels = chat_batch(model, QUESTIONS[:3])  # left padded: prompts of different lengths
    settings = DartSettings(layer=1)  # the tiny LLM has 2 layers
    logits, kept = dart_first_token_logits(model.model, ids, mask, pixels, budget, settings)
    assert kept == [4 + 8 * (budget // 8)] * 3
    with torch.no_grad():
        expected = manual_dart(model.model, ids, mask, pixels, budget, settings)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        full = model.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
    assert not torch.allclose(logits, full)  # pruning changed what the last layers saw


def test_retained_tokens_follow_the_dart_code():
    gen = torch.Generator().manual_seed(0)
    keys, states = torch.randn(60, 16, generator=gen), torch.randn(60, 8, generator=gen)
    start, length = 5, 40
    kept = retained_image_tokens(keys, states, start, length, budget=16)
    pivots = (keys[start:start + length].abs().sum(-1).topk(4).indices + start).tolist()
    assert set(pivots) <= set(kept) and len(kept) == 4 + 8 * 2
    assert all(start <= p < start + length for p in kept) and kept == sorted(kept)
    # the first pivot's picks are the tokens least similar to it
    first = list(set(pivots + (keys[start + length:].abs().sum(-1).topk(4).indices + start + length).tolist()))[0]
    pool = sorted(set(range(start, start + length)) - set(pivots))
    similarity = torch.nn.functional.cosine_similarity(states[first].unsqueeze(0), states[pool], dim=-1)
    assert {pool[i] for i in similarity.argsort()[:2].tolist()} <= set(kept)
    # a budget above the run keeps all of it
    assert retained_image_tokens(keys, states, start, length, budget=8 * length) == list(range(start, start + length))


def test_eval_runs_dart_beside_the_reducers(tiny_folders, tmp_path, capsys):
    import json

    from par_export.cli import main

    llava, clip = tiny_folders
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--methods", "par,dart:layer=1",
                 "--budgets", "8,auto", "--n", "6", "--batch", "6", "--out", str(tmp_path / "o")]) == 0
    rows = {(r["method"], r["budget"]): r for r in json.loads((tmp_path / "o" / "results.json").read_text())}
    assert set(rows) == {("full", 64), ("par", 8), ("par", "auto"), ("dart:layer=1", 8)}  # DART has no auto
    dart, par = rows[("dart:layer=1", 8)], rows[("par", 8)]
    assert dart["mean_kept"] == 12 and dart["n"] == 6
    assert par["flops_relative"] < dart["flops_relative"] < 1  # its first layer still sees all 64 tokens
    for argv, message in ((["--methods", "dart:depth=2"], "DART takes layer="),
                          (["--methods", "dart", "--backend", "onnxruntime"], "it has no graph to build")):
        assert main(["eval", "--model", str(llava), "--clip", str(clip), "--n", "2", *argv,
                     "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
