"""STA token pruning (golden/sta.py): schedule, scoring rules, integer/float agreement."""

import math

import pytest
import torch
import torch.nn.functional as F

from golden.intvidt import Execution, Tokens, quantize_vidt
from golden.sta import (STAPruner, activation, forward_float_sta, forward_int_sta, key_metric,
                        minmax_normalise, stage_blocks, transition)
from golden.vidt import VidT, VidTConfig

SEED = 5


def _gen(seed=SEED):
    return torch.Generator().manual_seed(seed)


def _run_all(pruner, keys_of, x_of, batch):
    """Run the three stages (blocks 0, 1, 2 for depth 4), feeding keys and x as functions of
    the original positions of the tokens still present."""
    x = None
    for block in range(pruner.depth):
        pos = pruner.kept_positions(batch)
        x = pruner.prune(block, x_of(pos), keys_of(pos))
    return x


def _random_inputs(b, n, d=16, heads=2, hd=8, seed=SEED):
    g = _gen(seed)
    return torch.randn(b, n, d, generator=g), torch.randn(b, heads, n, hd, generator=g)


# ------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("r", [1, 3])
def test_kept_counts_per_stage(r):
    n_t, n_s, b = 8, 12, 3
    pruner = STAPruner(n_t, n_s, r, depth=4)
    assert pruner.blocks == (0, 1, 2)
    assert pruner.dropped_per_stage == [8 * r, 4 * r, 2 * r]
    x_all, k_all = _random_inputs(b, n_t * n_s)
    counts = []
    for block in range(4):
        pos = pruner.kept_positions(b)
        x = pruner.prune(block, x_all.gather(1, pos[..., None].expand(-1, -1, 16)),
                         k_all.gather(2, pos[:, None, :, None].expand(-1, 2, -1, 8)))
        counts.append(x.shape[1])
        # Frame-major, original order: positions strictly increasing in every clip.
        assert (pruner.positions[:, 1:] > pruner.positions[:, :-1]).all()
        # The surviving tokens are the inputs at those positions.
        assert torch.equal(x, x_all.gather(1, pruner.positions[..., None].expand(-1, -1, 16)))
    total = n_t * n_s
    assert counts == [total - 8 * r, total - 12 * r, total - 14 * r, total - 14 * r]
    assert pruner.tokens_per_block == [total] + counts[:3]
    # Every group of every stage keeps the same count in every clip.
    for rec, groups, per_group in zip(pruner.records, [n_t, n_t // 2, n_t // 4],
                                      [n_s - r, 2 * n_s - 3 * r, 4 * n_s - 7 * r]):
        assert rec.keep.shape == (b, groups, per_group)


def test_coinciding_stages_and_validation():
    assert stage_blocks(4) == (0, 1, 2)
    assert stage_blocks(2) == (0, 0, 1)
    assert stage_blocks(1) == (0, 0, 0)
    # depth 2: stages 1 and 2 both run after block 0, stage 3 after block 1.
    pruner = STAPruner(4, 6, 1, depth=2)
    x, k = _random_inputs(2, 24)
    y = pruner.prune(0, x, k)
    assert y.shape[1] == 24 - 4 - 2 and [r.block for r in pruner.records] == [0, 0]
    g = _gen(1)
    y = pruner.prune(1, y, torch.randn(2, 2, y.shape[1], 8, generator=g))
    assert y.shape[1] == 24 - 7 and pruner.tokens_per_block == [24, 18]
    with pytest.raises(ValueError):
        STAPruner(6, 6, 1, 4)              # n_t not a multiple of 4
    with pytest.raises(ValueError):
        STAPruner(8, 4, 3, 4)              # more than the even tokens of a frame
    skipped = STAPruner(8, 6, 1, 4)
    with pytest.raises(RuntimeError):      # stage 1 after block 0 was never run
        skipped.prune(1, *_random_inputs(1, 48))


# ------------------------------------------------------------------------- scoring rules
def test_first_frame_rule():
    n_t, n_s, r, b = 4, 15, 4, 5
    x, keys = _random_inputs(b, n_t * n_s, hd=6)
    pruner = STAPruner(n_t, n_s, r, depth=4)
    pruner.prune(0, x, keys)
    rec = pruner.records[0]
    assert rec.order == [0, 1, 2, 3]
    metric = F.normalize(keys[:, :, :n_s].to(torch.float64).mean(1), dim=-1)
    for c in range(b):
        kept = set(rec.keep[c, 0].tolist())
        assert set(range(1, n_s, 2)) <= kept
        best = (metric[c, 0::2] @ metric[c, 1::2].T).amax(1)
        want_drop = {2 * i for i in best.argsort(descending=True)[:r].tolist()}
        assert set(range(n_s)) - kept == want_drop
        assert torch.allclose(rec.first_match[c], best, atol=1e-12)


def _moving_object_clip(n_t, n_s, hd, seed):
    """Keys of a static background (identical in every frame, self-similar) and of one object
    moving one position per frame whose key changes every frame. Returns the key function and
    the original positions of the object tokens."""
    g = _gen(seed)
    base = torch.randn(hd, generator=g)
    bg = base + 0.4 * torch.randn(n_s, hd, generator=g)          # one key per position
    obj = torch.randn(n_t, hd, generator=g) * 2.0                # a new key every frame
    table = bg.repeat(n_t, 1)                                    # [n_t * n_s, hd]
    obj_pos = torch.tensor([f * n_s + (3 + f) for f in range(n_t)])
    table[obj_pos] = obj
    # Two heads whose mean is the table (the metric averages over heads).
    noise = torch.randn(n_t * n_s, hd, generator=g)
    heads = torch.stack([table + noise, table - noise])           # [2, N, hd]
    return (lambda pos: heads[:, pos].permute(1, 0, 2, 3)), obj_pos


def test_background_is_dropped_before_moving_object():
    n_t, n_s, hd, r, b = 8, 16, 16, 3, 1
    for seed in range(3):
        keys_of, obj_pos = _moving_object_clip(n_t, n_s, hd, seed)
        pruner = STAPruner(n_t, n_s, r, depth=4)
        # Constant activations: selection by temporal redundancy alone.
        _run_all(pruner, keys_of, lambda pos: torch.ones(b, pos.shape[1], 4), b)
        survivors = set(pruner.positions[0].tolist())
        assert set(obj_pos.tolist()) <= survivors, seed
        assert len(survivors) == n_t * n_s - 14 * r


def test_identical_frames_are_equally_redundant():
    n_t, n_s, r, b = 8, 5, 2, 2
    # Every token has the same key: fully redundant everywhere.
    same = torch.ones(b, 2, n_t * n_s, 4)
    pruner = STAPruner(n_t, n_s, r, depth=4)
    pruner.prune(0, torch.ones(b, n_t * n_s, 3), same)
    rec = pruner.records[0]
    # Frame 1 sees all n_s tokens of frame 0 with weight 1: each row sums to n_s / n_s = 1.
    assert torch.allclose(rec.scores[1], torch.ones(b, n_s, dtype=torch.float64), atol=1e-12)
    for f in range(2, n_t):
        s = rec.scores[f]
        assert torch.equal(s, s[:, :1].expand_as(s))                 # exactly equal
        assert torch.allclose(s, torch.full_like(s, 1.0 / n_s), atol=1e-12)
    # Documented tie rule: the earliest tokens are kept (frame 0: the latest evens dropped).
    assert rec.keep[0, 0].tolist() == [0, 1, 3]
    for f in range(1, n_t):
        assert rec.keep[:, f].tolist() == [list(range(n_s - r))] * b

    # Identical frames of distinct, orthogonal tokens: frame 1 scores are all exactly
    # (e + n_s - 1) / (e + n_s - 1) = 1, whatever token.
    eye = torch.eye(n_s).repeat(n_t, 1)[None, None].expand(b, 2, -1, -1)
    pruner = STAPruner(n_t, n_s, r, depth=4)
    pruner.prune(0, torch.ones(b, n_t * n_s, 3), eye)
    s1 = pruner.records[0].scores[1]
    assert torch.allclose(s1, torch.ones_like(s1), atol=1e-12)
    # ... and a token whose predecessor was dropped becomes the least redundant one.
    s2 = pruner.records[0].scores[2][0]
    dropped_in_1 = sorted(set(range(n_s)) - set(pruner.records[0].keep[0, 1].tolist()))
    assert all(s2[i] < s2[j] for i in dropped_in_1 for j in range(n_s) if j not in dropped_in_1)


def test_stage2_runs_in_reverse():
    n_t, n_s, r, b = 8, 4, 1, 2
    pruner = STAPruner(n_t, n_s, r, depth=4)
    x, keys = _random_inputs(b, n_t * n_s)
    pruner.prune(0, x, keys)
    # Stage 2 sees 4 groups of 2 (n_s - r) = 6 tokens: give every group the same orthogonal
    # keys (a static scene), so the outcome follows from the visiting order alone.
    size = 2 * (n_s - r)
    eye = torch.eye(8)[:size].repeat(n_t // 2, 1)[None, None].expand(b, 2, -1, -1)
    pruner.prune(1, torch.ones(b, 4 * size, 3), eye)
    rec = pruner.records[1]
    assert rec.order == [3, 2, 1, 0] and rec.scores[3] is None and rec.scores[0] is not None
    odd = set(range(1, size, 2))
    # The last pair is visited first (bipartite rule: all its odd tokens survive); the first
    # pair is visited last and, its scores carried back from later frames, loses an odd one.
    assert all(odd <= set(rec.keep[c, 3].tolist()) for c in range(b))
    assert all(not odd <= set(rec.keep[c, 0].tolist()) for c in range(b))
    # Worked example (ties keep the earlier token): group 3 drops 4 (last even), group 2
    # drops 5 (all scores 1), group 1 drops 4, group 0 drops 3.
    assert [sorted(set(range(size)) - set(rec.keep[0, g].tolist())) for g in range(4)] \
        == [[3], [4], [5], [4]]
    # Stage 3 is forward again.
    y = pruner.prune(2, torch.ones(b, pruner.num_tokens, 3),
                     torch.randn(b, 2, pruner.num_tokens, 8, generator=_gen(9)))
    assert pruner.records[2].order == [0, 1] and y.shape[1] == 32 - 14


def test_transition_columns_sum_to_one_and_scores_carry():
    g = _gen()
    cur = key_metric(torch.randn(3, 2, 7, 5, generator=g))
    prev = key_metric(torch.randn(3, 2, 4, 5, generator=g))
    t = transition(cur, prev)
    assert t.shape == (3, 7, 4) and (t > 0).all()
    assert torch.allclose(t.sum(1), torch.ones(3, 4, dtype=torch.float64), atol=1e-12)
    want = torch.softmax(cur @ prev.transpose(1, 2), dim=1)
    assert torch.allclose(t, want, atol=1e-12)

    n_t, n_s, r, b = 8, 9, 2, 3
    pruner = STAPruner(n_t, n_s, r, depth=4)
    x, keys = _random_inputs(b, n_t * n_s, seed=11)
    pruner.prune(0, x, keys)
    rec = pruner.records[0]
    ones = torch.ones(b, dtype=torch.float64)
    # Frame 1: n_s columns of weight 1; later frames: renormalised weights summing to 1.
    assert torch.allclose(rec.scores[1].sum(1), n_s * ones, atol=1e-12)
    for f in range(2, n_t):
        assert torch.allclose(rec.scores[f].sum(1), ones, atol=1e-12)
    for f in range(1, n_t):
        # Carried weights are the plain scores of the kept tokens (no activation factor).
        kept = rec.scores[f].gather(1, rec.keep[:, f])
        assert torch.allclose(rec.carried[f], kept / kept.sum(1, keepdim=True), atol=1e-15)
        assert not torch.allclose(rec.values[f], rec.scores[f])   # act did enter selection


def test_activation_breaks_equal_redundancy():
    n_t, n_s, r, b = 4, 6, 2, 1
    same = torch.ones(b, 2, n_t * n_s, 4)                      # all scores equal
    act = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0]).repeat(n_t)
    pruner = STAPruner(n_t, n_s, r, depth=4)
    pruner.prune(0, act[None, :, None].expand(b, -1, 2), same)
    for f in range(1, n_t):                                    # the two weakest go: 1 and 3
        assert pruner.records[0].keep[0, f].tolist() == [0, 2, 4, 5]


def test_constant_activation_and_zero_keys_stay_finite():
    assert torch.equal(minmax_normalise(torch.full((2, 5), 3.0, dtype=torch.float64)),
                       torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(key_metric(torch.zeros(1, 2, 3, 4)), torch.zeros(1, 3, 4,
                                                                       dtype=torch.float64))
    for x in (torch.zeros(2, 32, 6), torch.full((2, 32, 6), 7.0)):
        pruner = STAPruner(8, 4, 1, depth=4)
        keys = torch.randn(2, 2, 32, 8, generator=_gen())
        keys[:, :, 5] = 0.0                                    # a zero key too
        pruner.prune(0, x, keys)
        for rec in pruner.records:
            for v in rec.values[1:]:
                assert torch.isfinite(v).all()
            assert torch.isfinite(rec.first_match).all()
    assert torch.equal(activation(torch.tensor([[[1, -2, 3]]])),
                       torch.tensor([[6.0]], dtype=torch.float64))


def test_integer_and_float_inputs_select_identically():
    n_t, n_s, r, b = 8, 10, 2, 3
    g = _gen(21)
    keys_i = torch.randint(-128, 128, (b, 2, n_t * n_s, 8), generator=g)
    x_i = torch.randint(-32768, 32768, (b, n_t * n_s, 16), generator=g)
    outs = []
    for keys, x in ((keys_i, x_i), (keys_i.to(torch.int8), x_i),
                    (keys_i.float(), x_i.float())):
        pruner = STAPruner(n_t, n_s, r, depth=4)
        y = x
        for block in range(3):
            pos = pruner.kept_positions(b)
            k = keys.gather(2, pos[:, None, :, None].expand(-1, 2, -1, 8))
            y = pruner.prune(block, x.gather(1, pos[..., None].expand(-1, -1, 16)), k)
        assert y.dtype == x.dtype
        outs.append((pruner.positions, y.to(torch.float64)))
    for pos, y in outs[1:]:
        assert torch.equal(pos, outs[0][0]) and torch.equal(y, outs[0][1])


# ------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def small_models():
    cfg = VidTConfig(height=24, width=24, dim=32, heads=2, depth=4)   # n_t 8, n_s 9
    torch.manual_seed(SEED)
    model = VidT(cfg).eval()
    videos = torch.randint(0, 256, (7, 1, 16, 24, 24), dtype=torch.uint8, generator=_gen())
    return model, quantize_vidt(model, videos[:4]), videos[4:]


def test_forward_int_sta(small_models):
    model, qmodel, videos = small_models
    cfg, r, b = model.cfg, 2, len(videos)
    logits, stats = forward_int_sta(qmodel, videos, r)
    n = cfg.num_tokens
    assert logits.dtype == torch.int64 and logits.shape == (b, cfg.num_classes)
    assert stats["tokens_per_block"] == [n, n - 8 * r, n - 12 * r, n - 14 * r]
    assert stats["tokens_out"] == n - 14 * r and stats["positions"].shape == (b, n - 14 * r)
    # Different clips keep different tokens (same count).
    assert not all(torch.equal(stats["positions"][0], p) for p in stats["positions"][1:])
    # MACs of the pruned run: qkv of block 1 runs on the tokens left after stage 1.
    qkv_macs = qmodel.blocks[1].qkv.macs_per_token
    assert stats["macs"][(1, "qkv")].performed == b * (n - 8 * r) * qkv_macs
    # Hand-built run: the pruner's outputs are what the model pools.
    pruner = STAPruner(cfg.n_t, cfg.n_s, r, cfg.depth)
    x = qmodel.tokens(videos)
    tokens = Tokens.full(b, cfg.n_t, cfg.n_s)
    for i, blk in enumerate(qmodel.blocks):
        x, k = blk.forward(x, Execution(), i, tokens)
        assert k.shape[2] == x.shape[1]
        x, tokens = pruner.prune(i, x, k, tokens)
        assert x.shape[:2] == tokens.frame.shape == tokens.spatial.shape
    assert torch.equal(tokens.frame * cfg.n_s + tokens.spatial, stats["positions"])
    assert torch.equal(qmodel.head_forward(x), logits)
    # r = 0 is the dense model, bit for bit.
    assert torch.equal(forward_int_sta(qmodel, videos, 0)[0], qmodel(videos))


def test_forward_float_sta_and_int_agree_on_counts(small_models):
    model, _, videos = small_models
    x = videos.float() / 255.0
    logits, stats = forward_float_sta(model, x, 2)
    assert logits.shape == (len(videos), model.cfg.num_classes)
    assert stats["tokens_out"] == model.cfg.num_tokens - 28
    assert torch.equal(forward_float_sta(model, x, 0)[0], model(x))


def test_deterministic(small_models):
    _, qmodel, videos = small_models
    first = forward_int_sta(qmodel, videos, 3)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        second = forward_int_sta(qmodel, videos, 3)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1]["positions"], second[1]["positions"])
    for a, b in zip(first[1]["pruner"].records, second[1]["pruner"].records):
        assert torch.equal(a.keep, b.keep)
        assert all(torch.equal(s, t) for s, t in zip(a.scores, b.scores) if s is not None)
    assert not math.isnan(float(first[0].float().sum()))


@pytest.mark.parametrize("depth", [2, 6])
def test_selection_from_the_chips_reports_equals_selection_from_the_tensors(depth):
    """prune_reported (head-summed integer keys and sum |x|, what the chip reports) keeps the
    same tokens as prune on the keys and tokens themselves, stage after stage, including two
    stages after one block (depth 2: stages after blocks 0, 0, 1)."""
    g = torch.Generator().manual_seed(613 + depth)
    n_t, n_s, r, heads, hd, d = 8, 9, 2, 3, 4, 12
    a, b = STAPruner(n_t, n_s, r, depth), STAPruner(n_t, n_s, r, depth)
    n = n_t * n_s
    for block in range(depth):
        x = torch.randint(-300, 300, (2, n, d), generator=g)
        keys = torch.randint(-128, 128, (2, heads, n, hd), generator=g)
        want = a.prune(block, x, keys)
        kept = b.prune_reported(block, keys.sum(1), heads, x.abs().sum(-1))
        got = x if kept is None else x.gather(1, kept[..., None].expand(-1, -1, d))
        assert torch.equal(got, want), block
        if kept is not None:
            assert torch.equal(a.positions, b.positions) and bool((kept.diff(dim=1) > 0).all())
        n = want.shape[1]
