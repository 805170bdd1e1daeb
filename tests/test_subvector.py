"""Sub-vector attention sparsity, its predictor accounting and granularity baselines."""

import math

import pytest
import torch

from golden.blocks import subvector_decode_reference
from golden.intvidt import Execution, Tokens
from golden.sparse import SparseExecution
from golden.subvector import GRANULARITIES, SubvectorAttention, column_masks, unit_order
from hw.config import preset

SEED = 5


def _qk(n=50, hd=16, heads=2, seed=SEED):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (1, heads, n, hd), generator=g)
    k = torch.randint(-128, 128, (1, heads, n, hd), generator=g)
    return q, k


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_keep_shape_and_ratio(granularity, rho):
    q, k = _qk()
    policy = SubvectorAttention(8, rho, granularity)
    mask, macs = policy.keep(0, q, k)
    n = q.shape[-2]
    if rho == 1.0:
        assert mask is None and macs == 0                      # dense: no predictor runs
        return
    assert mask.shape == (1, 2, n, n) and mask.dtype == torch.bool
    assert mask.any(-1).all()                                 # no empty softmax row
    # Every granularity's predictor MACs stay within the common budget.
    budget = 2 * n * n * 16 // 8
    assert 0.9 * budget < macs <= budget * 1.2
    # The selection's compares: rows of query units x candidates log2 candidates.
    rows, cand = {"subvector": (7, 50), "block": (7, 50), "element": (50, 50)}[granularity]
    assert policy.keep_costed(0, q, k)[2] == 2 * rows * cand * math.ceil(math.log2(cand))
    frac = mask.double().mean().item()
    assert frac <= rho + 8 / n + 1e-9                          # rounding of one unit per row


def test_subvector_units_are_whole_columns_of_v_queries():
    q, k = _qk(n=50)
    mask, _ = SubvectorAttention(8, 0.3).keep(0, q, k)
    m = mask[0, 0]
    for b in range(7):                                         # 50 = 6 * 8 + 2 (partial block)
        rows = m[b * 8:min(50, b * 8 + 8)]
        assert (rows == rows[0]).all()


def test_predictor_ranks_obvious_keys_first():
    # Key 3 aligns with every query; it must survive a 1-unit budget in every granularity.
    q = torch.ones(1, 1, 16, 8, dtype=torch.int64) * 10
    k = torch.zeros(1, 1, 16, 8, dtype=torch.int64)
    k[0, 0, 3] = 100
    for granularity in GRANULARITIES:
        mask, _ = SubvectorAttention(8, 1 / 16, granularity).keep(0, q, k)
        assert mask[0, 0, :, 3].all(), granularity


def test_column_masks_feed_the_decoder():
    q, k = _qk(n=24)
    mask, _ = SubvectorAttention(8, 0.4).keep(0, q, k)
    cols = column_masks(mask[0, 0], 8)
    assert len(cols) == 24
    for j, bits in enumerate(cols):
        for b in range(3):
            assert bool((bits >> b) & 1) == bool(mask[0, 0, b * 8, j])
    items = subvector_decode_reference(preset("tiny"), [cols])
    kept = sum(1 for it in items if not it["empty"])
    assert kept * 8 == int(mask[0, 0].sum())


@pytest.mark.parametrize("kwargs", [dict(v=0, rho=0.5), dict(v=8, rho=0), dict(v=8, rho=1.5),
                                    dict(v=8, rho=0.5, granularity="row")])
def test_invalid_policy(kwargs):
    with pytest.raises(ValueError):
        SubvectorAttention(**kwargs)


def test_model_with_sparse_attention_counts_predictor(small_int_model):
    _, qmodel, clips = small_int_model
    clips = clips[:2]
    dense = Execution()
    ref = qmodel(clips, dense)
    full = SparseExecution(qmodel.cfg.n_s, attention=SubvectorAttention(8, 1.0))
    assert torch.equal(qmodel(clips, full), ref)               # keeping everything is exact
    run = SparseExecution(qmodel.cfg.n_s, attention=SubvectorAttention(8, 0.25))
    qmodel(clips, run)
    n, hd = qmodel.cfg.num_tokens, qmodel.cfg.dim // qmodel.cfg.heads
    pred = run.macs[(0, "predictor")]
    units = math.ceil(n / 8)
    assert pred.performed == 2 * qmodel.cfg.heads * units * n * hd
    select = run.macs[(0, "select")]
    assert select.performed == 2 * qmodel.cfg.heads * units * n * math.ceil(math.log2(n))
    qk = run.macs[(0, "qk")]
    assert qk.performed <= 0.26 * qk.dense and qk.dense == dense.macs[(0, "qk")].dense


def test_position_order_is_serpentine_then_frame():
    # A 2 x 3 frame, two frames: positions 0 1 2 / 5 4 3 along the serpentine, each position's
    # frames together.
    full = Tokens.full(1, 2, 6)
    perm = unit_order("position", full.frame, full.spatial, 3)
    tokens = [(int(full.frame[0, i]), int(full.spatial[0, i])) for i in perm[0]]
    assert tokens == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2),
                      (0, 5), (1, 5), (0, 4), (1, 4), (0, 3), (1, 3)]
    assert torch.equal(unit_order("frame", full.frame, full.spatial, 3)[0], torch.arange(12))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_position_order_units_hold_one_position_across_frames(granularity):
    # 8 frames of a 2 x 2 frame, v = 8: a sub-vector is one position's 8 frames, so every query
    # of a position has the same kept keys (subvector, block); the mask is in model order.
    n_t, n_s = 8, 4
    g = torch.Generator().manual_seed(SEED)
    q = torch.randint(-128, 128, (1, 2, n_t * n_s, 16), generator=g)
    k = torch.randint(-128, 128, (1, 2, n_t * n_s, 16), generator=g)
    tokens = Tokens.full(1, n_t, n_s)
    policy = SubvectorAttention(8, 0.5, granularity, order="position", grid_width=2)
    mask, _ = policy.keep(0, q, k, tokens)
    if granularity != "element":
        for s in range(n_s):
            rows = mask[0, :, s::n_s]                     # the queries at position s
            assert (rows == rows[:, :1]).all()
    # The same as running frame order on tokens permuted into position order.
    perm = unit_order("position", tokens.frame, tokens.spatial, 2)[0]
    ref, _ = SubvectorAttention(8, 0.5, granularity).keep(0, q[:, :, perm], k[:, :, perm])
    assert torch.equal(mask[:, :, perm][:, :, :, perm], ref)
    with pytest.raises(ValueError, match="frames and positions"):
        policy.keep(0, q, k)


def test_threshold_keep_is_capped_top_k_within_the_margin():
    q, k = _qk(n=40)
    topk, _ = SubvectorAttention(8, 0.5).keep(0, q, k)
    wide, _ = SubvectorAttention(8, 0.5, keep="threshold", margin=1e9).keep(0, q, k,
                                                                            scale=(1, 0))
    assert torch.equal(wide, topk)                   # nothing within reach of the cap is dropped
    # A margin below one exponent step keeps only the row's best key (ties aside).
    tight, _ = SubvectorAttention(8, 0.5, keep="threshold", margin=1e-9).keep(
        0, q, k, scale=(1 << 20, 0))
    assert (tight.sum(-1) >= 1).all() and tight.sum() < topk.sum()
    with pytest.raises(ValueError, match="softmax scaling"):
        SubvectorAttention(8, 0.5, keep="threshold").keep(0, q, k)


def test_per_block_keep_ratios():
    q, k = _qk()
    policy = SubvectorAttention(8, (0.25, 1.0))
    assert policy.keep(1, q, k) == (None, 0)          # a dense block runs no predictor
    assert policy.keep(2, q, k) == (None, 0)          # blocks not listed are dense
    mask, cost = policy.keep(0, q, k)
    assert cost > 0 and mask.double().mean() < 0.3
