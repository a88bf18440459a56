"""The authors' forms of the baselines against a plain, per-image reading of their code, fed
identical inputs; and where they run (the LLaVA-1.5 adapter, eval) and where not (export)."""

from __future__ import annotations

import json

import pytest
import torch

from par_export.cli import main
from par_export.reduce import authors_methods, available_methods, create_reducer


def visionzip_reference(hidden, cls_attention_heads, metric, dominant_num, contextual_num):
    """One image, as ``CLIPVisionTower_VisionZip.forward`` (dvlab-research/VisionZip @ 3151f6d)
    reads: ``hidden [1 + N, D]``, ``cls_attention_heads [H, N]``, ``metric [1 + N, Dk]``;
    ``dominant_num`` patches besides CLS. Returns the rows ``[1 + dominant_num + contextual_num, D]``."""
    n = hidden.shape[0] - 1
    summed = cls_attention_heads.sum(dim=0).tolist()
    top = sorted(range(n), key=lambda i: -summed[i])[:dominant_num]
    kept = sorted([0] + [i + 1 for i in top])
    rows = [hidden[i] for i in kept]
    remaining = [i for i in range(n + 1) if i not in kept]
    step = max(1, len(remaining) // contextual_num)
    targets = list(range(0, len(remaining), step))[:contextual_num]
    keys = {j: metric[remaining[j]] / metric[remaining[j]].norm() for j in range(len(remaining))}
    groups = {t: [] for t in range(len(targets))}
    for j in range(len(remaining)):
        if j in targets:
            continue
        similarity = [float(keys[j] @ keys[targets[t]]) for t in range(len(targets))]
        groups[similarity.index(max(similarity))].append(hidden[remaining[j]])
    for t, target in enumerate(targets):
        merged = torch.stack(groups[t]).mean(dim=0) if groups[t] else torch.zeros_like(hidden[0])
        rows.append(hidden[remaining[target]] + merged)
    return torch.stack(rows)


@pytest.mark.parametrize("n", [576, 256])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k, dominant", [(64, 54), (128, 108), (16, 14)])
def test_visionzip_reproduces_its_authors_code(n, batch, k, dominant):
    gen = torch.Generator().manual_seed(n * 10 + batch + k)
    hidden = torch.randn(batch, n + 1, 40, generator=gen) * 3
    heads = torch.softmax(torch.randn(batch, 4, n, generator=gen) * 2, dim=-1)
    metric = torch.randn(batch, n + 1, 12, generator=gen)
    out = create_reducer("visionzip")(hidden[:, 1:], None, heads.mean(dim=1), budget=k,
                                      tower={"cls_token": hidden[:, 0], "keys": metric})
    assert out.num_kept.tolist() == [k] * batch and out.tokens.shape == (batch, k, 40)
    for b in range(batch):
        expected = visionzip_reference(hidden[b], heads[b], metric[b], dominant - 1, k - dominant)
        torch.testing.assert_close(out.tokens[b], expected, rtol=1e-5, atol=1e-5)
    assert (out.keep_index[:, 0] == n).all()  # the CLS row comes first


def prumerge_reference(features, q, k, plus=False):
    """The batch as ``token_prune_merge_advanced(_plus)(if_adaptive=True)`` (42Shawn/LLaVA-PruMerge
    @ 097c041) reads, one token at a time: ``features [B, N, C]``; ``q``, ``k`` ``[B, 1 + N, C]``
    (the next layer's projections). Returns ``[B, kept + 1, C]``."""
    import numpy as np

    b, n, c = features.shape
    attn = torch.softmax((q @ k.transpose(-2, -1)) * c ** -0.5, dim=-1)[:, 0, 1:]
    flat = attn.numpy().ravel()
    q1, q3 = np.percentile(flat, 25), np.percentile(flat, 75)
    ratio = len(np.where(flat > q3 + 1.5 * (q3 - q1))[0]) / len(flat)
    idx = torch.topk(attn, int(n * ratio), dim=1, largest=True).indices
    if plus:
        grid = torch.arange(0, 575, int(int(1 / ratio) / 3))
        idx = torch.cat([idx, torch.tensor([[x for x in grid.tolist() if x not in idx.flatten().tolist()]])], dim=1)
    keys = k[:, 1:] / k[:, 1:].norm(dim=-1, keepdim=True)
    out = []
    for i in range(b):
        kept, others = idx[i].tolist(), [j for j in range(n) if j not in idx[i].tolist()]
        rows = []
        for position, token in enumerate(kept):
            rest = kept[:position] + kept[position + 1:] + others
            similarity = [float(keys[i, token] @ keys[i, j]) for j in rest]
            nearest = [rest[j] for j in sorted(range(len(rest)), key=lambda j: -similarity[j])[:32]]
            rows.append(features[i, token] + sum(features[i, j] * attn[i, j] for j in nearest))
        rows.append(sum(features[i, j] * attn[i, j] for j in others))
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("method, n, batch", [("prumerge", 576, 1), ("prumerge", 576, 2), ("prumerge", 256, 3),
                                              ("prumerge+", 576, 1), ("prumerge+", 576, 2)])
def test_prumerge_reproduces_its_authors_code(method, n, batch):
    gen = torch.Generator().manual_seed(n + batch)
    features = torch.randn(batch, n, 32, generator=gen)
    q, k = torch.randn(batch, n + 1, 32, generator=gen), torch.randn(batch, n + 1, 32, generator=gen)
    # a peaked CLS row, as in a trained tower: a few patches' keys point along the CLS query
    peaks = torch.randperm(n, generator=gen)[:12] + 1
    k[:, peaks] += 2.0 * q[:, :1]
    tower = {"next_queries": q, "next_keys": k}
    if method == "prumerge" or batch == 1:  # prumerge+'s code takes one image per call
        # the code called with the whole batch: one outlier ratio for all its images
        out = create_reducer(method, batch_ratio=True)(features, None, None, budget="auto", tower=tower)
        expected = prumerge_reference(features, q, k, plus=method == "prumerge+")
        assert out.tokens.shape == expected.shape and out.num_kept.tolist() == [expected.shape[1]] * batch
        torch.testing.assert_close(out.tokens, expected, rtol=1e-5, atol=1e-5)
    # the default: each image as the code called with it alone (how the authors evaluate)
    out = create_reducer(method)(features, None, None, budget="auto", tower=tower)
    for i in range(batch):
        alone = prumerge_reference(features[i:i + 1], q[i:i + 1], k[i:i + 1], plus=method == "prumerge+")[0]
        assert int(out.num_kept[i]) == alone.shape[0]
        torch.testing.assert_close(out.tokens[i, :alone.shape[0]], alone, rtol=1e-5, atol=1e-5)


def test_prumerge_plus_with_many_outliers_keeps_what_its_authors_code_keeps():
    """Over 1/6 of the patches outliers: the code's grid step is 1, so it keeps every patch (the
    neighbours are any other patch, so 32 of them always exist for 576 patches)."""
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(1, 576, 32, generator=gen)
    q, k = torch.randn(1, 577, 32, generator=gen), torch.randn(1, 577, 32, generator=gen)
    k[:, 1:121] += 4.0 * q[:, :1]  # 120 of 576 patches (21%) stand out
    out = create_reducer("prumerge+")(features, None, None, budget="auto", tower={"next_queries": q, "next_keys": k})
    expected = prumerge_reference(features, q, k, plus=True)
    assert int(out.num_kept[0]) == expected.shape[1] >= 576
    torch.testing.assert_close(out.tokens[:, :expected.shape[1]], expected, rtol=1e-5, atol=1e-5)


def test_authors_forms_are_listed_apart_and_need_the_tower():
    assert {"visionzip", "prumerge", "prumerge+"} <= set(authors_methods())
    assert "visionzip" not in available_methods()
    with pytest.raises(ValueError, match="also reads the vision tower's cls_token, keys"):
        create_reducer("visionzip")(torch.randn(1, 16, 8), None, torch.rand(1, 16), budget=8)


def test_visionzip_in_llava_reads_the_feature_layer_and_its_layer_keys(tiny_folders):
    from test_llava import QUESTIONS, chat_batch

    from par_export.models.clip_vision import hidden_state_index
    from par_export.models.llava import ReducedLlava

    llava_dir, clip_dir = tiny_folders
    model = ReducedLlava.from_pretrained(llava_dir, method="visionzip", clip_path=clip_dir)
    ids, mask, pixels = chat_batch(model, QUESTIONS[:2])
    captured = {}
    tower = model.vision_tower
    hidden = tower(pixels, output_hidden_states=True).hidden_states
    index = hidden_state_index(model.model.config.vision_feature_layer, len(hidden) - 1)
    layer = tower.encoder.layers[index - 1]
    hook = layer.self_attn.k_proj.register_forward_hook(lambda m, a, out: captured.setdefault("k", out))
    try:
        _, _, extras = model.vision_features(pixels, tower_outputs=True)
    finally:
        hook.remove()
    heads = layer.self_attn.num_heads
    expected_keys = captured["k"].view(*captured["k"].shape[:2], heads, -1).mean(dim=2)
    torch.testing.assert_close(extras["keys"], expected_keys)
    torch.testing.assert_close(extras["cls_token"], hidden[index][:, 0])
    batch = model.prepare_inputs(ids, mask, pixels, budget=16)
    image_tokens = (batch.model_inputs["input_ids"] == model.model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [16, 16]
    torch.testing.assert_close(batch.image_features[0][0], model.projector(hidden[index][0, 0]))  # CLS row first


def test_authors_forms_do_not_export_and_run_in_eval(tiny_folders, tmp_path, capsys):
    from par_export.export import export_model
    from par_export.export.exporter import ExportError

    llava, clip = tiny_folders
    with pytest.raises(SystemExit) as exit_:  # the CLI offers only what exports
        main(["export", "--model", str(llava), "--method", "visionzip", "--out", str(tmp_path / "e")])
    assert exit_.value.code == 2 and "invalid choice: 'visionzip'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="is an authors' form: it reads the tower's cls_token and keys"):
        export_model(llava, tmp_path / "e", method="visionzip", budget=16, clip_path=clip, progress=False)
    assert not (tmp_path / "e").exists()
    assert main(["methods"]) == 0 and "does not export" in capsys.readouterr().out
    assert main(["eval", "--model", str(llava), "--clip", str(clip), "--methods", "visionzip,visionzip_mean,prumerge",
                 "--budgets", "16", "--n", "4", "--batch", "4", "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [(r["method"], r["mean_kept"]) for r in rows[1:]] == [("visionzip", 16), ("visionzip_mean", 16),
                                                                  ("prumerge", 16)]
