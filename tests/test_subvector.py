"""Sub-vector attention sparsity, its predictor accounting and granularity baselines."""

import math

import pytest
import torch

from golden.blocks import subvector_decode_reference
from golden.intvidt import Execution
from golden.sparse import SparseExecution
from golden.subvector import GRANULARITIES, SubvectorAttention, column_masks
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
    assert mask.shape == (1, 2, n, n) and mask.dtype == torch.bool
    assert mask.any(-1).all()                                 # no empty softmax row
    budget = 2 * n * n * 16 // 8
    assert 0 < macs <= budget * 1.2
    if rho == 1.0:
        assert mask.all()
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
    assert pred.performed == 2 * qmodel.cfg.heads * math.ceil(n / 8) * n * hd
    qk = run.macs[(0, "qk")]
    assert qk.performed <= 0.26 * qk.dense and qk.dense == dense.macs[(0, "qk")].dense
