"""par::TopKCluster: the custom-op graph on ONNX Runtime == standard-ops graph == torch reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from par_export.backends.onnxruntime import ort_session
from par_export.backends.ort_custom_op import custom_op_session
from par_export.export import export_model
from par_export.export.custom_op import topk_cluster_node
from par_export.models.tiny import save_tiny_clip, save_tiny_llava
from par_export.reduce.topk_cluster import topk_cluster


class OpGraph(torch.nn.Module):
    """Just the op (custom node) or its reference (standard ops), for op-level parity."""

    def __init__(self, fn, k_max, router="merge"):
        super().__init__()
        self.fn, self.k_max, self.router = fn, k_max, router

    def forward(self, tokens, scores, relevance, num_kept):
        return self.fn(tokens, scores, relevance, num_kept, self.k_max, 1.0, 0.5, self.router)


def export_op(fn, path, example, k_max, router):
    names = ["tokens", "scores", "relevance", "num_kept"]
    torch.onnx.export(OpGraph(fn, k_max, router), example, str(path), dynamo=False, opset_version=17,
                      input_names=names, output_names=["merged", "keep_index", "assignment", "kept"],
                      dynamic_axes={n: {0: "batch"} for n in names})


@pytest.mark.parametrize("router", ["merge", "keep"])
@pytest.mark.parametrize("n, d, k_max", [(64, 16, 16), (144, 32, 48), (576, 8, 192)])
def test_op_graph_matches_standard_graph_and_torch(tmp_path, n, d, k_max, router):
    gen = torch.Generator().manual_seed(n + d)
    example = (torch.randn(2, n, d, generator=gen), torch.rand(2, n, generator=gen),
               torch.randn(2, n, generator=gen), torch.tensor([k_max // 2, k_max]))
    export_op(topk_cluster_node, tmp_path / "custom.onnx", example, k_max, router)
    export_op(topk_cluster, tmp_path / "standard.onnx", example, k_max, router)
    assert any(node.domain == "par" and node.op_type == "TopKCluster"
               for node in onnx.load(str(tmp_path / "custom.onnx")).graph.node)
    custom = custom_op_session(tmp_path / "custom.onnx")
    standard = ort_session(tmp_path / "standard.onnx")
    for batch in (1, 3, 5):  # different K per image: adaptive budgets are a [B] input
        tokens = torch.randn(batch, n, d, generator=gen)
        scores, relevance = torch.rand(batch, n, generator=gen), torch.randn(batch, n, generator=gen)
        kept = torch.randint(1, k_max + 1, (batch,), generator=gen)
        feed = {"tokens": tokens.numpy(), "scores": scores.numpy(), "relevance": relevance.numpy(),
                "num_kept": kept.numpy()}
        reference = topk_cluster(tokens, scores, relevance, kept, k_max, 1.0, 0.5, router)
        for session in (custom, standard):
            merged, keep_index, assignment, out_kept = session.run(None, feed)
            np.testing.assert_allclose(merged, reference[0].numpy(), atol=1e-5)
            assert (keep_index == reference[1].numpy()).all()
            assert (assignment == reference[2].numpy()).all()
            assert (out_kept == reference[3].numpy()).all()


def test_out_of_range_k_is_clamped_not_undefined(tmp_path):
    example = (torch.randn(1, 32, 4), torch.rand(1, 32), torch.randn(1, 32), torch.tensor([4]))
    export_op(topk_cluster_node, tmp_path / "custom.onnx", example, 8, "merge")
    session = custom_op_session(tmp_path / "custom.onnx")
    feed = {"tokens": example[0].numpy(), "scores": example[1].numpy(), "relevance": example[2].numpy()}
    for k, expected in [(0, 1), (-3, 1), (100, 8)]:
        *_, kept = session.run(None, {**feed, "num_kept": np.array([k])})
        assert kept.tolist() == [expected]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-plugin")
    llava = save_tiny_llava(root / "llava", image_size=48, patch_size=4)
    return llava, save_tiny_clip(root / "clip", llava)


@pytest.mark.parametrize("budget", ["auto", 24])
def test_plugin_export_matches_standard_export(tiny, tmp_path, budget):
    llava, clip = tiny
    common = dict(budget=budget, clip_path=clip, progress=False)
    plugin_report = export_model(llava, tmp_path / "plugin", plugin=True, **common)
    export_model(llava, tmp_path / "standard", **common)
    assert plugin_report["passed"] and plugin_report["metadata"]["plugin"]["op"] == "par::TopKCluster"
    custom = ort_session(tmp_path / "plugin" / "vision_par.onnx")
    standard = ort_session(tmp_path / "standard" / "vision_par.onnx")
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        feed = {"pixel_values": rng.standard_normal((batch, 3, 48, 48)).astype(np.float32),
                "query_embeds": rng.standard_normal((batch, 16)).astype(np.float32)}
        if budget != "auto":
            feed["budget"] = np.array(budget)
        for a, b in zip(custom.run(None, feed), standard.run(None, feed)):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_plugin_export_in_llm_space_routes_on_the_tower_tokens(tiny, tmp_path):
    """space=llm (no CLIP folder): the op gets the tower's tokens as its 5th input, cluster_tokens,
    and the graph equals the standard-ops export, which clusters on them too; the op alone routes
    by them (the same call without them routes on the projected rows and differs)."""
    llava, _ = tiny
    common = dict(budget=24, progress=False)
    report = export_model(llava, tmp_path / "plugin", plugin=True, **common)
    export_model(llava, tmp_path / "standard", **common)
    assert report["passed"] and report["metadata"]["space"] == "llm"
    nodes = [n for n in onnx.load(str(tmp_path / "plugin" / "vision_par.onnx")).graph.node if n.domain == "par"]
    assert len(nodes) == 1 and len(nodes[0].input) == 5
    custom = ort_session(tmp_path / "plugin" / "vision_par.onnx")
    standard = ort_session(tmp_path / "standard" / "vision_par.onnx")
    rng = np.random.default_rng(2)
    for batch in (1, 3):
        feed = {"pixel_values": rng.standard_normal((batch, 3, 48, 48)).astype(np.float32),
                "query_embeds": rng.standard_normal((batch, 32)).astype(np.float32), "budget": np.array(24)}
        for a, b in zip(custom.run(None, feed), standard.run(None, feed)):
            np.testing.assert_allclose(a, b, atol=1e-5)

    gen = torch.Generator().manual_seed(4)
    rows, tower = torch.randn(1, 64, 32, generator=gen), torch.randn(1, 64, 8, generator=gen)
    scores, relevance, kept = torch.rand(1, 64, generator=gen), torch.randn(1, 64, generator=gen), torch.tensor([8])
    by_tower = topk_cluster_node(rows, scores, relevance, kept, 8, cluster_tokens=tower)
    assert torch.equal(by_tower[2], topk_cluster(rows, scores, relevance, kept, 8, cluster_tokens=tower)[2])
    assert not torch.equal(by_tower[2], topk_cluster(rows, scores, relevance, kept, 8)[2])


def test_plugin_needs_par(tiny, tmp_path):
    from par_export.export import ExportError

    with pytest.raises(ExportError, match="--plugin replaces PAR's top-k clustering"):
        export_model(tiny[0], tmp_path / "x", method="cls_attn", budget=8, plugin=True, progress=False)
