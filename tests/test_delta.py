"""Inter-frame delta linear projections on the integer model."""

import random

import pytest
import torch

from golden import contract
from golden.blocks import bitmap_decode_reference
from golden.delta import DeltaLinear
from golden.intvidt import Execution, QLinear
from golden.sparse import SparseExecution
from hw.config import preset

SEED = 11


def _layer(rng, out_f=12, in_f=20):
    w = torch.tensor([[rng.randint(-127, 127) for _ in range(in_f)] for _ in range(out_f)])
    b = torch.tensor([rng.randint(-1000, 1000) for _ in range(out_f)])
    return QLinear(w, b, torch.full((out_f,), 1 << 15), torch.full((out_f,), 22), contract.ACT)


def _frames(rng, batch=2, n_t=4, n_s=5, in_f=20, change=0.3):
    x = torch.tensor([[[rng.randint(-128, 127) for _ in range(in_f)] for _ in range(n_s)]
                      for _ in range(batch)])
    frames = [x]
    for _ in range(n_t - 1):
        step = torch.tensor([[[rng.choice([-3, -1, 0, 0, 0, 1, 2, 40]) if rng.random() < change
                               else 0 for _ in range(in_f)] for _ in range(n_s)]
                             for _ in range(batch)])
        frames.append((frames[-1] + step).clamp(-128, 127))
    return torch.cat(frames, 1)


@pytest.mark.parametrize("tau", [0, 1, 2, 50])
def test_output_equals_dense_on_the_reference(tau):
    rng = random.Random(SEED + tau)
    layer = _layer(rng)
    n_t, n_s = 4, 5
    x = _frames(rng, n_t=n_t, n_s=n_s)
    i = torch.arange(n_t * n_s).expand(2, -1)
    state = DeltaLinear(layer, tau, n_s)
    y = state(x, i // n_s, i % n_s)
    # y is exactly W r + b for the references after each frame: check the invariant at the end.
    assert torch.equal(state.y_ref, layer.accumulate(state.ref))
    # Frame 0 is dense; with tau = 0 every frame equals the dense layer exactly.
    assert torch.equal(y[:, :n_s], layer.accumulate(x[:, :n_s]))
    if tau == 0:
        assert torch.equal(y, layer.accumulate(x))
    # The reference never drifts from the input by more than tau.
    assert int((state.ref - x[:, -n_s:]).abs().max()) <= tau
    c = state.count
    assert c.dense == 2 * n_t * n_s * 20 * 12
    # golden.macs: a dense token sends its nonzero elements, a delta token its nonzero deltas.
    nonzero0 = int((x[:, :n_s] != 0).sum())
    assert c.dense_sent == nonzero0
    assert c.performed == (nonzero0 + c.sent) * 12 < c.dense
    assert c.compares == 2 * n_t * n_s * 20
    assert c.dense_tokens == 2 * n_s


def test_threshold_saves_monotonically():
    rng = random.Random(SEED)
    layer = _layer(rng)
    x = _frames(rng)
    i = torch.arange(20).expand(2, -1)
    performed = []
    for tau in (0, 1, 2, 3, 100):
        state = DeltaLinear(layer, tau, 5)
        state(x, i // 5, i % 5)
        performed.append(state.count.performed)
    assert performed == sorted(performed, reverse=True) and performed[0] > performed[-1]
    # Only frame 0 (dense, its nonzero elements) remains.
    assert performed[-1] == int((x[:, :5] != 0).sum()) * 12


def test_bitmaps_carry_the_sent_deltas():
    rng = random.Random(SEED)
    layer = _layer(rng)
    x = _frames(rng)
    i = torch.arange(20).expand(2, -1)
    state = DeltaLinear(layer, 1, 5)
    state(x, i // 5, i % 5)
    cfg = preset("tiny")
    from golden.delta import token_streams
    for token in state.last_delta.reshape(-1, 20):
        maps, vals = token_streams(cfg, token.tolist())
        want = bitmap_decode_reference([token.tolist()])[0]
        assert all(v != 0 for _, v in want)
        assert len(vals) == -(-len(want) // cfg.decode_width)
        # Reassemble what the decoder would emit from the streams.
        bits = [(m["word"] >> b) & 1 for m in maps for b in range(cfg.bitmap_word)]
        flat = [v for beat in vals for v in beat["values"]]
        got = [(idx, flat[n]) for n, idx in enumerate(j for j, b in enumerate(bits) if b)]
        assert got == want


def test_invalid_threshold_and_layer():
    with pytest.raises(ValueError, match="non-negative"):
        DeltaLinear(_layer(random.Random(0)), -1, 4)
    with pytest.raises(ValueError, match="No delta projection"):
        SparseExecution(49, tau={"qk": 1})


def test_model_with_delta_projections(small_int_model):
    _, qmodel, clips = small_int_model
    clips = clips[:4]
    dense = Execution()
    ref = qmodel(clips, dense)
    exact = SparseExecution(qmodel.cfg.n_s, tau=0)
    assert torch.equal(qmodel(clips, exact), ref)          # tau = 0 is exact
    d0, p0 = exact.totals()
    assert d0 == dense.totals()[0] and p0 < d0
    sparse = SparseExecution(qmodel.cfg.n_s, tau=3)
    qmodel(clips, sparse)
    d3, p3 = sparse.totals()
    assert d3 == d0 and p3 < p0
    for name in ("qkv", "proj", "fc1", "fc2"):
        c = sparse.macs[(1, name)]
        assert c.dense_tokens == 4 * qmodel.cfg.n_s and c.performed < c.dense


def test_delta_after_token_pruning_with_ragged_frames(small_int_model):
    # After STA stage 2 the clips of a batch keep different numbers of tokens per frame; the
    # delta projections must still be exact at tau = 0, clip by clip and batched.
    from golden.sta import STAPruner
    _, qmodel, clips = small_int_model
    clips = clips[:4]
    cfg = qmodel.cfg

    def pruner():
        return STAPruner(cfg.n_t, cfg.n_s, 12, cfg.depth)
    ref = qmodel(clips, SparseExecution(cfg.n_s, pruner=pruner()))
    run = SparseExecution(cfg.n_s, tau=0, pruner=pruner())
    assert torch.equal(qmodel(clips, run), ref)
    frames = run.pruner.frames
    per_frame = torch.stack([(frames == f).sum(1) for f in range(cfg.n_t)], 1)
    assert not torch.equal(per_frame, per_frame[:1].expand_as(per_frame)), "frames not ragged"
    one_by_one = torch.cat([qmodel(clips[i:i + 1], SparseExecution(cfg.n_s, tau=2,
                                                                   pruner=pruner()))
                            for i in range(4)])
    assert torch.equal(qmodel(clips, SparseExecution(cfg.n_s, tau=2, pruner=pruner())),
                       one_by_one)


def test_per_block_thresholds():
    run = SparseExecution(5, tau=[None, 3, {"fc1": 2}])
    assert [run.tau(0, "qkv"), run.tau(1, "qkv"), run.tau(2, "fc1"), run.tau(2, "qkv"),
            run.tau(3, "qkv")] == [None, 3, 2, None, None]
    assert SparseExecution(5, tau=4).tau(7, "fc2") == 4
    with pytest.raises(ValueError, match="No delta projection"):
        SparseExecution(5, tau=[{"attn": 1}])
    with pytest.raises(ValueError, match="None, an int or a dict"):
        SparseExecution(5, tau=[1.5])
