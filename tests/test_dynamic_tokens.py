"""Reducers exported with a dynamic token axis N (images whose token count differs: LLaVA-NeXT,
Qwen2.5-VL): one graph, traced at one N, equals eager PyTorch at other N."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import METHODS

from par_export.reduce import PARConfig, create_reducer, reducer_class
from par_export.reduce.checks import dynamic_token_axis

DYNAMIC = [m for m in METHODS if reducer_class(m).dynamic_tokens]
K_MAX, MIN_TOKENS, TRACED = 24, 30, 90


class ReducerGraph(torch.nn.Module):
    def __init__(self, reducer, budget):
        super().__init__()
        self.reducer, self.budget = reducer, budget

    def forward(self, tokens, query, attn, budget):
        out = self.reducer(tokens, query.unsqueeze(1), attn, budget=budget if self.budget == "input" else "auto")
        return out.tokens, out.num_kept, out.keep_index


def inputs(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, n, 16, generator=gen)
    return tokens, torch.randn(1, 16, generator=gen), torch.softmax(torch.randn(1, n, generator=gen) * 3, -1)


def test_the_methods_that_cannot_are_few():
    assert set(METHODS) - set(DYNAMIC) == {"pool", "prumerge_mean", "prumerge+_mean"}


@pytest.mark.parametrize("method", DYNAMIC)
def test_one_graph_serves_every_token_count(method, tmp_path):
    budget = "auto" if method == "par" else "input"
    graph = ReducerGraph(create_reducer(method, config=PARConfig(k_max=K_MAX, space="llm")), budget).eval()
    k = torch.tensor(9)
    path = tmp_path / f"{method}.onnx"
    with dynamic_token_axis(MIN_TOKENS), torch.no_grad():
        torch.onnx.export(graph, (*inputs(TRACED, 0), k), str(path), dynamo=False, opset_version=17,
                          input_names=["tokens", "query", "attn", "budget"], output_names=["out", "num_kept", "index"],
                          dynamic_axes={"tokens": {1: "N"}, "attn": {1: "N"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for n in (MIN_TOKENS, 47, TRACED, 250):
        tokens, query, attn = inputs(n, n)
        feed = {"tokens": tokens, "query": query, "attn": attn, "budget": k}
        got = session.run(None, {name: v.numpy() for name, v in feed.items() if name in names})
        with torch.no_grad():
            expected = [t.numpy() for t in graph(tokens, query, attn, k)]
        assert got[1].tolist() == expected[1].tolist(), (n, got[1], expected[1])
        assert np.array_equal(got[2], expected[2]), n
        np.testing.assert_allclose(got[0], expected[0], atol=1e-5)


def test_outside_the_context_the_graph_is_static():
    """Without dynamic_token_axis an export still bakes N (the LLaVA-1.5 graphs are unchanged)."""
    from par_export.reduce.checks import token_bound

    assert token_bound(torch.zeros(1, 7, 2)) == 7
    with dynamic_token_axis(3):
        assert token_bound(torch.zeros(1, 7, 2)) == 7  # eager: the real N
    with pytest.raises(ValueError, match="min_tokens must be >= 1"), dynamic_token_axis(0):
        pass
