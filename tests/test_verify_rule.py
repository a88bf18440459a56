"""The rule export validation and verify apply: near-ties of the reference's scores are told from
real disagreements; a few off rows pass, a systematic error does not."""

from __future__ import annotations

import numpy as np

from par_export.export.validate import TOLERANCES, case_verdict, compare_outputs, condensed, error_limit, off_rows

N, K, D = 40, 8, 16


def reference(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scores = np.linspace(1.0, 0.0, N)[None].copy()  # token i ranks i-th; kept: 0..K-1
    keep = np.arange(K)[None]
    return {"image_embeds": rng.standard_normal((1, K, D)).astype(np.float32), "num_kept": np.array([K]),
            "keep_index": keep, "scores": scores}


def swapped(ref: dict, lost: int, gained: int) -> dict:
    """The reference's outputs with token ``lost`` replaced by ``gained`` (indices re-sorted)."""
    index = sorted(set(ref["keep_index"][0].tolist()) - {lost} | {gained})
    out = {**ref, "keep_index": np.array([index])}
    rows = {i: row for i, row in zip(ref["keep_index"][0], ref["image_embeds"][0])}
    out["image_embeds"] = np.stack([rows.get(i, np.ones(D, np.float32)) for i in index])[None]
    return out


def verdict(ref: dict, out: dict, precision: str = "fp16") -> tuple[dict, dict]:
    bounds = TOLERANCES[precision]
    figures = compare_outputs(ref, out, bounds["tie"])
    limit = error_limit(precision, figures["reference_max_abs"])
    return figures, case_verdict(condensed(figures, limit, bounds), limit, bounds)


def test_a_near_tie_swap_is_not_counted_and_a_far_one_is():
    ref = reference()
    ref["scores"][0, K] = ref["scores"][0, K - 1] - 1e-4  # token K is a hair below the last kept one
    near, ok = verdict(ref, swapped(ref, lost=K - 1, gained=K))
    assert near["index_agreement"] == (K - 1) / K and near["tied_tokens"] == 1
    assert near["real_index_agreement"] == 1.0 and ok["keep_index"]
    far, ok = verdict(ref, swapped(ref, lost=0, gained=N - 1))  # the best token for the worst
    assert far["tied_tokens"] == 0 and far["real_index_agreement"] == (K - 1) / K and not ok["keep_index"]
    no_scores, ok = verdict({k: v for k, v in ref.items() if k != "scores"}, swapped(ref, K - 1, K))
    assert no_scores["tied_tokens"] is None and not ok["keep_index"]  # without scores: strict


def test_rows_are_matched_by_index_and_a_few_off_rows_pass_but_not_every_row():
    ref = reference(1)
    out = swapped(ref, lost=K - 1, gained=K)  # shifts slots: matched by index, the shared rows are exact
    figures, _ = verdict(ref, out)
    assert figures["shared_tokens"] == K - 1 and figures["shared_max_abs_error"] == 0.0
    assert figures["min_cosine"] > 0.9999

    big = {**reference(2), "num_kept": np.array([K])}
    big["image_embeds"] = np.random.default_rng(3).standard_normal((1, K, D)).astype(np.float32)
    one_off = {**big, "image_embeds": big["image_embeds"].copy()}
    one_off["image_embeds"][0, 3] = -one_off["image_embeds"][0, 3]  # one row flipped: cosine -1
    figures, ok = verdict(big, one_off, "int8")  # int8 allows 20% of rows off: 1 of 8 passes on rows...
    limit = error_limit("int8", figures["reference_max_abs"])
    assert off_rows(figures, limit, TOLERANCES["int8"]) == 1
    assert not ok["embeddings"]  # ...but the mean cosine (0.75) fails the end metric
    scaled = {**big, "image_embeds": big["image_embeds"] * 1.5}  # every row off by 50%: cosine 1, error large
    figures, ok = verdict(big, scaled)
    assert figures["min_cosine"] > 0.9999 and off_rows(figures, error_limit("fp16", figures["reference_max_abs"]),
                                                       TOLERANCES["fp16"]) == K
    assert not ok["embeddings"]


def test_one_router_near_tie_row_in_64_passes_fp16():
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((1, 64, D)).astype(np.float32)
    ref = {"image_embeds": rows, "num_kept": np.array([64]), "keep_index": np.arange(64)[None],
           "scores": np.linspace(1.0, 0.0, 100)[None]}
    out = {**ref, "image_embeds": rows.copy()}
    out["image_embeds"][0, 10, 0] += 0.2 * np.abs(rows).max()  # one row past the 5% bound, cosine ~0.99
    figures, ok = verdict(ref, out)
    assert off_rows(figures, error_limit("fp16", figures["reference_max_abs"]), TOLERANCES["fp16"]) == 1
    assert figures["mean_cosine"] >= TOLERANCES["fp16"]["mean_cosine"] and all(ok.values())
