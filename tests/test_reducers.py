"""Invariants of every reducer's output, and PAR's behaviour on planted structure."""

from __future__ import annotations

import pytest
import torch
from conftest import METHODS

from par_export.reduce import PARConfig, PARReducer, create_reducer
from par_export.reduce.retrieval import standardized_relevance
from par_export.synthetic import planted_scene


def run(method, x, prompt, attn, budget=32, **options):
    return create_reducer(method, **options)(x, prompt, attn, budget=budget)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shapes_and_dtypes(method, dtype, batch):
    x, prompt, attn = batch
    out = run(method, x.to(dtype), prompt.to(dtype), attn.to(dtype), budget=32)
    b, n, d = x.shape
    assert out.tokens.shape == (b, 32, d) and out.tokens.dtype == dtype
    assert out.keep_index.shape == (b, 32) and out.keep_index.dtype == torch.int64
    assert out.assignment.shape == (b, n) and out.assignment.dtype == torch.int64
    assert out.valid.shape == (b, 32) and out.valid.dtype == torch.bool
    assert out.num_kept.shape == (b,) and out.num_kept.dtype == torch.int64
    assert out.scores.shape == (b, n) and out.scores.dtype == torch.float32
    assert torch.isfinite(out.tokens.float()).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [1, 16, 64, 144])
def test_budget_respected_and_indices_consistent(method, budget, batch):
    x, prompt, attn = batch
    out = run(method, x, prompt, attn, budget=budget)
    assert bool((out.num_kept >= 1).all()) and bool((out.num_kept <= budget).all())
    if method not in ("pool", "prumerge_mean"):  # these two may keep fewer than K by design
        assert out.num_kept.tolist() == [budget, budget]
    for b in range(x.shape[0]):
        k = int(out.num_kept[b])
        assert out.valid[b].tolist() == [True] * k + [False] * (budget - k)
        kept = out.keep_index[b, :k]
        assert bool((kept[1:] > kept[:-1]).all()), "keep_index must be strictly ascending"
        assert bool((kept >= 0).all()) and bool((kept < x.shape[1]).all())
        assert bool((out.keep_index[b, k:] == -1).all())
        # each center is assigned to its own slot, every slot has a member, no slot past K
        assert out.assignment[b, kept].tolist() == list(range(k))
        assigned = out.assignment[b][out.assignment[b] >= 0]
        assert bool((assigned < k).all())
        assert sorted(set(assigned.tolist())) == list(range(k))
        assert bool((out.tokens[b, k:] == 0).all())


def _merge_weights(method, x, prompt, attn):
    """Per-token merge weight (up to a per-cluster factor) each method documents."""
    if method == "par":
        return torch.exp(standardized_relevance(x, prompt, None, attn) / PARConfig().tau)
    if method in ("prumerge_mean", "prumerge+_mean"):
        return attn.float()
    return torch.ones(x.shape[:2])


@pytest.mark.parametrize("method", METHODS)
def test_each_token_is_weighted_mean_of_its_members(method, batch):
    x, prompt, attn = batch
    out = run(method, x, prompt, attn, budget=24)
    weights = _merge_weights(method, x, prompt, attn)
    for b in range(x.shape[0]):
        for slot in range(int(out.num_kept[b])):
            members = (out.assignment[b] == slot).nonzero().flatten()
            w = weights[b, members]
            expected = (w.unsqueeze(-1) * x[b, members]).sum(0) / w.sum()
            torch.testing.assert_close(out.tokens[b, slot], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_apply_repeats_the_reduction_on_another_tensor_of_the_same_tokens(method, batch):
    """``out.apply(values)``: the same kept set, slots and merge weights on other features of the
    same N tokens (DeepStack levels, projected rows). On the tokens themselves it gives
    ``out.tokens``; it is linear, so on an affine map of the tokens it gives that map of the
    reduced tokens (weights sum to 1 per slot); on one-hot rows it gives each slot's weights."""
    x, prompt, attn = batch
    reducer = create_reducer(method)
    for budget in [5, "auto"] if reducer.supports_auto else [5]:
        check_apply(reducer(x, prompt, attn, budget=budget), x)


def check_apply(out, x):
    torch.testing.assert_close(out.apply(x), out.tokens, rtol=1e-5, atol=1e-6)
    weight, bias = torch.randn(32, 48, generator=torch.Generator().manual_seed(1)), torch.randn(48)
    projected = out.apply(x @ weight + bias)
    k = out.valid.unsqueeze(-1)
    torch.testing.assert_close(projected * k, (out.tokens @ weight + bias) * k, rtol=1e-4, atol=1e-4)
    shares = out.apply(torch.eye(x.shape[1]).expand(x.shape[0], -1, -1))  # [B, W, N]: slot weights
    for b in range(x.shape[0]):
        kept = int(out.num_kept[b])
        torch.testing.assert_close(shares[b, :kept].sum(-1), torch.ones(kept))
        members = shares[b, :kept] > 0
        assert torch.equal(members, out.assignment[b].unsqueeze(0) == torch.arange(kept).unsqueeze(1))
    with pytest.raises(ValueError, match=r"expected \[B, N, D'\]"):
        out.apply(x[:, :-1])


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_sample(method, batch):
    x, prompt, attn = batch
    whole = run(method, x, prompt, attn, budget=20)
    for b in range(x.shape[0]):
        one = run(method, x[b : b + 1], prompt[b : b + 1], attn[b : b + 1], budget=20)
        assert torch.equal(one.keep_index[0], whole.keep_index[b])
        assert torch.equal(one.assignment[0], whole.assignment[b])
        torch.testing.assert_close(one.tokens[0], whole.tokens[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method, batch):
    x, prompt, attn = batch
    first, second = run(method, x, prompt, attn), run(method, x, prompt, attn)
    assert torch.equal(first.keep_index, second.keep_index)
    assert torch.equal(first.assignment, second.assignment)
    assert torch.equal(first.tokens, second.tokens)


def test_ties_broken_by_index():
    # Identical tokens, prompt and attention: every score ties, the lowest indices win.
    x = torch.ones(1, 64, 8)
    out = PARReducer(PARConfig(router="keep"))(x, torch.ones(1, 1, 8), budget=5)
    assert out.keep_index[0].tolist() == [0, 1, 2, 3, 4]


def test_planted_relevance_is_kept_by_par_not_by_random():
    scene = planted_scene(batch=6, side=24, dim=64, seed=0, objects=3)
    target_size = scene.target.sum(dim=1)
    par = PARReducer()(scene.tokens, scene.prompt_embedding, budget=16)
    rand = create_reducer("random")(scene.tokens, scene.prompt_embedding, budget=16)

    def hit_rate(out):
        hits = torch.gather(scene.target, 1, out.keep_index).sum(dim=1)
        return (hits / target_size.clamp(max=16)).mean().item()

    assert hit_rate(par) >= 0.9
    assert hit_rate(rand) <= 0.15  # chance: K/N = 16/576 of the kept tokens land on the object


def test_exact_duplicates_share_one_cluster():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 100, 16, generator=gen)
    groups = [[5, 40, 77], [12, 13, 90]]
    for group in groups:
        x[0, group[1:]] = x[0, group[0]].clone()
    prompt = x[0, [5, 12]].mean(0).view(1, 1, 16)  # both groups relevant, so none is dropped
    out = PARReducer()(x, prompt, budget=24)
    for group in groups:
        slots = out.assignment[0, group].tolist()
        assert slots[0] >= 0 and len(set(slots)) == 1, (group, slots)


def test_cluster_tokens_give_the_similarities_and_visual_tokens_the_rows(batch):
    """PAR with ``cluster_tokens``: with the tokens themselves it is PAR; with another tensor of the
    same tokens, duplicates there share one cluster even where the rows differ, and each kept row
    is the weighted mean of its members' visual tokens (never of the cluster tokens)."""
    x, prompt, attn = batch
    reducer = PARReducer()
    same = reducer(x, prompt, attn, budget=16, cluster_tokens=x)
    plain = reducer(x, prompt, attn, budget=16)
    assert torch.equal(same.keep_index, plain.keep_index) and torch.equal(same.tokens, plain.tokens)

    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(1, 60, 32, generator=gen)  # what is merged (4096-wide in LLaVA)
    cluster = torch.randn(1, 60, 8, generator=gen)  # what is compared (the tower's 1024-wide)
    cluster[0, [7, 30]] = cluster[0, 3].clone()  # duplicates in the clustering tensor only
    query = rows[0, [3, 7, 30]].mean(0).view(1, 1, 32)
    out = reducer(rows, query, None, budget=12, cluster_tokens=cluster)
    slots = out.assignment[0, [3, 7, 30]].tolist()
    assert slots[0] >= 0 and len(set(slots)) == 1, slots
    slot = slots[0]
    members = (out.assignment[0] == slot).nonzero().flatten()
    weights = torch.softmax(out.log_weights[0, members], dim=0)
    torch.testing.assert_close(out.tokens[0, slot], (weights[:, None] * rows[0, members]).sum(0), atol=1e-5, rtol=1e-4)


def test_cluster_tokens_are_checked_and_refused_where_not_taken(batch):
    x, prompt, attn = batch
    with pytest.raises(ValueError, match=r"cluster_tokens .*expected \[B, N, Dc\]"):
        PARReducer()(x, prompt, attn, budget=8, cluster_tokens=x[:, :-1])
    with pytest.raises(ValueError, match="takes no cluster_tokens"):
        create_reducer("text_sim")(x, prompt, attn, budget=8, cluster_tokens=x)


def test_no_prompt_falls_back_to_cls_attention():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 144, 32, generator=gen)
    attn = torch.full((1, 144), 0.001)
    hot = torch.tensor([3, 50, 51, 99, 140])
    attn[0, hot] = 0.5
    out = PARReducer(PARConfig(router="keep"))(x, None, attn, budget=8)
    assert set(hot.tolist()) <= set(out.keep_index[0].tolist())
    # An empty prompt in a batch gets the same fallback as a call without prompt.
    prompt = torch.randn(1, 3, 32, generator=gen)
    masked = PARReducer(PARConfig(router="keep"))(x, prompt, attn, budget=8, prompt_mask=torch.zeros(1, 3))
    assert torch.equal(masked.keep_index, out.keep_index)


def test_adaptive_budget_differs_per_image():
    gen = torch.Generator().manual_seed(2)
    d = 16
    direction = torch.zeros(d)
    direction[0] = 1.0
    x = torch.nn.functional.normalize(torch.randn(2, 256, d, generator=gen), dim=-1)
    x[:, :, 0] = 0.0  # unit-norm noise off the prompt direction; its component is set below
    x[0, :120, 0] = 1.0  # many relevant tokens: K hits k_max
    x[1, :5, 0] = 3.0  # few strongly relevant tokens, the rest equally irrelevant: K hits k_min
    x[1, 5:, 0] = -0.05
    prompt = direction.view(1, 1, d).expand(2, 1, d)
    cfg = PARConfig(k_min=16, k_max=64)
    out = PARReducer(cfg)(x, prompt, budget="auto")
    assert out.tokens.shape[1] == 64
    assert out.num_kept.tolist() == [64, 16]
    assert out.valid.sum(dim=1).tolist() == [64, 16]


def test_tensor_budget_matches_int_budget(batch):
    x, prompt, attn = batch
    cfg = PARConfig(k_max=48)
    fixed = PARReducer(cfg)(x, prompt, attn, budget=20)
    dynamic = PARReducer(cfg)(x, prompt, attn, budget=torch.tensor(20))
    assert dynamic.tokens.shape[1] == 48
    assert torch.equal(dynamic.keep_index[:, :20], fixed.keep_index)
    assert torch.equal(dynamic.assignment, fixed.assignment)
    torch.testing.assert_close(dynamic.tokens[:, :20], fixed.tokens)
    assert bool((dynamic.tokens[:, 20:] == 0).all())


def test_keep_router_returns_original_tokens(batch):
    x, prompt, attn = batch
    out = PARReducer(PARConfig(router="keep"))(x, prompt, attn, budget=16)
    torch.testing.assert_close(out.tokens, torch.gather(x, 1, out.keep_index.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
    assert int((out.assignment >= 0).sum()) == 2 * 16


def test_gamma_drops_irrelevant_tokens(batch):
    x, prompt, attn = batch
    keep_all = PARReducer(PARConfig(gamma=1e9))(x, prompt, attn, budget=16)
    default = PARReducer()(x, prompt, attn, budget=16)
    assert bool((keep_all.assignment >= 0).all())
    assert int((default.assignment < 0).sum()) > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r, x, p, a: r(x[0], p, a, budget=8), "rank 3"),
        (lambda r, x, p, a: r(x.long(), p, a, budget=8), "float32"),
        (lambda r, x, p, a: r(x.clone().index_fill_(1, torch.tensor([3]), float("nan")), p, a, budget=8), "NaN"),
        (lambda r, x, p, a: r(x, p, a, budget=0), r"budget must be in \[1, N=144\]"),
        (lambda r, x, p, a: r(x, p, a, budget=145), r"budget must be in \[1, N=144\]"),
        (lambda r, x, p, a: r(x, p, a, budget="many"), "positive int or 'auto'"),
        (lambda r, x, p, a: r(x, p[:1], a, budget=8), "batch"),
        (lambda r, x, p, a: r(x, None, None, budget=8), "needs prompt_embedding, or attn"),
        (lambda r, x, p, a: r(x, p, a[:, :10], budget=8), r"attn must have shape"),
        (lambda r, x, p, a: r(x, p, a, budget=torch.tensor(500)), r"tensor budget must be in \[1, 144\]"),
    ],
)
def test_bad_input_gets_clear_error(call, message, batch):
    x, prompt, attn = batch
    with pytest.raises((ValueError, TypeError), match=message):
        call(PARReducer(), x, prompt, attn)


def test_baseline_specific_errors(batch):
    x, prompt, attn = batch
    with pytest.raises(ValueError, match="has no adaptive budget"):
        create_reducer("random")(x, budget="auto")
    with pytest.raises(ValueError, match="CLS attention"):
        create_reducer("visionzip_mean")(x, prompt, None, budget=8)
    with pytest.raises(ValueError, match="python int budget"):
        create_reducer("pool", config=PARConfig(k_max=16))(x, budget=torch.tensor(8))
    with pytest.raises(ValueError, match="unknown reduction method 'nope'"):
        create_reducer("nope")


def test_config_validation():
    with pytest.raises(ValueError, match="k_min <= k_max"):
        PARConfig(k_min=100, k_max=10)
    with pytest.raises(ValueError, match="router must be one of"):
        PARConfig(router="drop")
    with pytest.raises(ValueError, match="unknown PARConfig option"):
        PARConfig().replace(betta=0.5)
    assert PARConfig.from_dict(PARConfig(beta=0.5).to_dict()) == PARConfig(beta=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method, batch):
    x, prompt, attn = batch
    cpu = run(method, x, prompt, attn)
    gpu = run(method, x.cuda(), prompt.cuda(), attn.cuda())
    assert torch.equal(cpu.keep_index, gpu.keep_index.cpu())
    torch.testing.assert_close(cpu.tokens, gpu.tokens.cpu(), rtol=1e-4, atol=1e-4)


def test_config_overrides_parse_by_option_type():
    from par_export.reduce import PARConfig

    config = PARConfig().with_overrides(["alpha=0.5", "k_max=64", "budget=32", "space=llm"])
    assert (config.alpha, config.k_max, config.budget, config.space) == (0.5, 64, 32, "llm")
    assert PARConfig().with_overrides(["budget=auto"]).budget == "auto"
    with pytest.raises(ValueError, match="unknown PARConfig option 'alpah'"):
        PARConfig().with_overrides(["alpah=1"])
    with pytest.raises(ValueError, match="k_max='many': expected a int"):
        PARConfig().with_overrides(["k_max=many"])
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        PARConfig().with_overrides(["alpha"])
