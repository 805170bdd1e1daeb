"""One definition of performed work (golden.macs), pinned on small cases whose totals are
worked out by hand here, and shared by the golden model, the cycle model and the benches."""

import torch

from golden import contract, macs
from golden.delta import DeltaLinear
from golden.intvidt import QLinear, Tokens
from golden.sparse import SparseExecution
from golden.sta import STAPruner
from golden.subvector import SubvectorAttention
from hw import cycles


def _layer(out_f=3, in_f=4):
    w = torch.arange(1, out_f * in_f + 1, dtype=torch.int64).reshape(out_f, in_f)
    return QLinear(w, torch.zeros(out_f, dtype=torch.int64), torch.full((out_f,), 1 << 15),
                   torch.full((out_f,), 20), contract.ACT)


def test_delta_layer_totals_by_hand():
    # One position, three frames, tau = 1:
    #   frame 0 [0, 5, 0, -2]: dense, its 2 nonzero elements are sent: 2 x 3 = 6 MACs;
    #   frame 1 [1, 5, 3, -2]: delta [1, 0, 3, 0], |1| <= tau, one element sent: 3 MACs;
    #   frame 2 [1, 5, 3, -2]: reference [0, 5, 3, -2], delta [1, 0, 0, 0]: nothing sent.
    x = torch.tensor([[[0, 5, 0, -2], [1, 5, 3, -2], [1, 5, 3, -2]]])
    state = DeltaLinear(_layer(), 1, 1)
    state(x, torch.tensor([[0, 1, 2]]), torch.zeros(1, 3, dtype=torch.int64))
    c = state.count
    assert (c.dense, c.performed, c.compares) == (36, 9, 12)
    assert (c.dense_sent, c.sent, c.dense_tokens, c.tokens) == (2, 1, 1, 3)


def test_the_cycle_model_counts_the_same_linear_work():
    # The bench's LinearWork from the same bitmap (delta != 0, dense tokens included) gives the
    # same performed MACs as the golden layer's count.
    bitmap = [[False, True, False, True], [False, False, True, False], [False] * 4]
    work = cycles.LinearWork.from_bitmap(bitmap, 3, 4)
    assert cycles.ideal_linear_macs(work) == 9 == macs.linear(3, 3)


def test_attention_totals_by_hand():
    # N = 4 tokens, one head of width 2, v = 2, rho = 0.5: each of the 2 query sub-vectors keeps
    # 2 of the 4 key columns: 2 x 2 x 2 = 8 entries, 8 x 2 MACs in QK^T and as many in A V.
    q = torch.tensor([[[[1, 0], [1, 0], [0, 1], [0, 1]]]])
    k = torch.tensor([[[[9, 0], [8, 0], [0, 9], [0, 8]]]])
    mask, pred_macs, compares = SubvectorAttention(2, 0.5).keep_costed(0, q, k)
    assert int(mask.sum()) == 8
    assert macs.attention(int(mask.sum()), 2) == 32
    assert macs.dense_attention(4, 1, 2) == 64
    # Predictor: 2 pooled queries x 4 keys x 2 channels; selection 2 rows x 4 log2 4 compares.
    assert pred_macs == 16 and compares == 16
    # The cycle model's attention work for the same kept columns.
    work = cycles.AttentionWork(tokens=4, heads=1, head_dim=2, kept=(((2, 2),),))
    assert cycles.ideal_attention_macs(work, 2) == 32


def test_sta_stage_ops_by_hand():
    # 2 groups of 4 tokens keeping 3, 1 head of width 2, d = 2:
    #   metric 8 x (1 + 2) x 2 + 8 = 56; activation 8 x 2 + 16 = 32;
    #   first group: 2 x 2 x (2 + 1) + 2 x 1 = 14; second group: 4 x 4 x (2 + 4) + 4 + 4 x 2
    #   + 2 x 3 = 114.
    assert macs.sta_stage_ops(2, 4, 3, heads=1, head_dim=2, dim=2) == 56 + 32 + 14 + 114


def test_a_sparse_run_counts_every_overhead():
    # A tiny model-shaped run through SparseExecution's hooks: compares for every delta
    # layer's input element, the predictor and its selection, and STA's scoring.
    layer = _layer(3, 4)
    run = SparseExecution(2, tau=1)
    x = torch.tensor([[[1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 9], [0, 0, 0, 0]]])
    run.linear(0, "qkv", layer, x, Tokens(torch.tensor([[0, 0, 1, 1]]),
                                          torch.tensor([[0, 1, 0, 1]])))
    c = run.macs[(0, "qkv")]
    # Frame 0: 4 + 0 nonzero dense elements; frame 1: one delta (9 - 4 = 5 > 1) at position 0.
    assert (c.performed, run.macs[(0, "compare")].performed) == ((4 + 1) * 3, 16)


def test_per_stage_sta_schedule():
    p = STAPruner(8, 49, (12, 0, 8), 4)
    assert [s["r"] for s in p.schedule] == [12, 0, 8]
    assert p.kept_per_stage == [8 * 37, 8 * 37, 2 * (4 * 37 - 8)]


def test_the_benches_vectors_carry_the_golden_count(small_int_model, tmp_path):
    # The bench's ideal cycles come from the exported bitmaps (sent elements x d_out, the
    # engine's mac_lanes); the eval's from SparseExecution: on one clip they are equal.
    from golden.export import export
    _, qmodel, clips = small_int_model
    manifest = export(qmodel, clips[:1], 1, tmp_path, tau=2, layers=("qkv", "fc2"))
    run = SparseExecution(qmodel.cfg.n_s, tau=2)
    qmodel(clips[:1], run)
    for name in ("qkv", "fc2"):
        d_out = manifest["layers"][name]["shapes"]["weight"][0]
        assert run.macs[(1, name)].performed == macs.linear(manifest["layers"][name]["sent"],
                                                            d_out)
