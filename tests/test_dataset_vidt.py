"""Tests of the synthetic video data set (golden.dataset) and the float VidT (golden.vidt)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golden import dataset as ds
from golden.vidt import VidT, VidTConfig, sincos_pos_embed, tubelets

CFG = ds.DatasetConfig()
# A "clean" world: no sensor noise, no distractor, static background: every pixel change is
# caused by the target.
CLEAN = replace(CFG, noise=(0.0, 0.0), p_distractor=0.0, pan_speed=(0.0, 0.0))


@pytest.fixture(scope="module")
def small_split():
    return ds.make_split(12, seed=3, split="train")


# ----------------------------------------------------------------------------- data set


def test_split_shapes_dtypes_and_range(small_split):
    videos, labels = small_split
    assert videos.shape == (12, 1, CFG.frames, CFG.height, CFG.width)
    assert videos.dtype == torch.uint8 and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < ds.NUM_CLASSES == 16
    x = ds.to_float(videos)
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    # Real content, not a constant image.
    assert x.std() > 0.05


def test_deterministic_per_seed_and_distinct_across_seeds_and_splits(small_split):
    videos, labels = small_split
    v2, l2 = ds.make_split(12, seed=3, split="train")
    assert torch.equal(videos, v2) and torch.equal(labels, l2)
    v3, _ = ds.make_split(12, seed=4, split="train")
    v4, _ = ds.make_split(12, seed=3, split="val")
    for other in (v3, v4):
        # Every clip differs, not just some.
        assert all(not torch.equal(videos[i], other[i]) for i in range(12))
    # Scenes differ, not only the noise: across seeds, splits and clip indices.
    starts = [ds.sample_params(range(12), seed=s, split=sp, noise=False).start[:, 0]
              for s, sp in ((3, "train"), (4, "train"), (3, "val"))]
    for other in starts[1:]:
        assert (np.abs(starts[0] - other).max(1) > 1e-6).all()
    pairs = np.abs(starts[0][:, None] - starts[0][None]).max(-1) + np.eye(12)
    assert pairs.min() > 1e-6


def test_clip_depends_only_on_seed_and_index(small_split):
    videos, labels = small_split
    # Another window of indices and another chunking give the same clips.
    v, lab = ds.make_split(7, seed=3, split="train", start=5, chunk=3)
    assert torch.equal(v, videos[5:12]) and torch.equal(lab, labels[5:12])


def test_labels_roughly_uniform():
    p = ds.sample_params(range(1600), seed=0, noise=False)
    counts = np.bincount(p.label, minlength=ds.NUM_CLASSES)
    assert counts.sum() == 1600
    # Expected 100 per class; binomial std ~ 9.7, so 60..140 is > 4 sigma.
    assert counts.min() >= 60 and counts.max() <= 140, counts
    shape, direction = ds.decode_label(p.label)
    assert np.array_equal(shape, p.shape[:, 0])          # label encodes the target's shape
    assert set(np.unique(direction)) == {0, 1, 2, 3}


def test_label_round_trip():
    for s in range(4):
        for d in range(4):
            assert ds.decode_label(ds.label_of(s, d)) == (s, d)


def test_target_stays_in_frame_and_is_larger_than_distractor():
    p = ds.sample_params(range(400), seed=1, noise=False)
    t = np.arange(CFG.frames)[None, :, None]
    centre = p.start[:, 0, None, :] + p.velocity[:, 0, None, :] * t        # [n, T, 2]
    size = p.size[:, 0, None, None]
    assert (centre >= size - 1e-9).all() and (centre <= CFG.width - 1 - size + 1e-9).all()
    assert (p.size[:, 0] > p.size[:, 1]).all()
    assert 0.6 < p.present[:, 1].mean() < 0.95                           # p_distractor = 0.8


def test_motion_follows_the_label_direction():
    p = ds.sample_params(range(64), seed=2, cfg=CLEAN)
    v = ds.render(p, CLEAN)[:, 0].to(torch.float32)                          # [n, T, H, W]
    diff = (v[:, 1:] - v[:, :-1]).abs()
    # Frames change (the object moves) ...
    assert (diff.flatten(1).amax(1) > 0).all()
    # ... and only near the target: every changed pixel lies within its extent + edge.
    t = torch.arange(CFG.frames, dtype=torch.float32)
    cx = torch.as_tensor(p.start[:, 0, 0])[:, None] + torch.as_tensor(p.velocity[:, 0, 0])[:, None] * t
    cy = torch.as_tensor(p.start[:, 0, 1])[:, None] + torch.as_tensor(p.velocity[:, 0, 1])[:, None] * t
    yy, xx = torch.meshgrid(torch.arange(CFG.height), torch.arange(CFG.width), indexing="ij")
    reach = 1.2 * 1.4 * torch.as_tensor(p.size[:, 0])[:, None, None, None] + 1.5
    dist = torch.minimum(
        torch.hypot(xx - cx[:, :-1, None, None], yy - cy[:, :-1, None, None]),
        torch.hypot(xx - cx[:, 1:, None, None], yy - cy[:, 1:, None, None]))
    assert (diff[dist > reach] == 0).all()
    # The centroid of the frame-to-frame change travels in the labelled direction.
    w = diff.sum((2, 3))                                                    # [n, T-1]
    mx = (diff * xx).sum((2, 3)) / w
    my = (diff * yy).sum((2, 3)) / w
    dx, dy = (mx[:, -1] - mx[:, 0]).numpy(), (my[:, -1] - my[:, 0]).numpy()
    _, direction = ds.decode_label(p.label)
    expect = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])[direction]
    along = dx * expect[:, 0] + dy * expect[:, 1]
    across = np.abs(dx * expect[:, 1] + dy * expect[:, 0])
    assert (along > 3.0).all(), along                                       # >= 0.5 px/frame * 14
    assert (along > across).all()


def test_background_pans():
    cfg = replace(CLEAN, pan_speed=(0.3, 0.7), target_size=(2.0, 2.5), distractor_size=(1.0, 1.5),
                  speed=(0.5, 0.6))
    p = ds.sample_params(range(8), seed=5, cfg=cfg)
    v = ds.render(p, cfg)[:, 0].to(torch.float32)
    last = cfg.frames - 1
    m = 12                                                 # search margin > 0.7 px * 15 frames
    for i in range(8):
        # Best integer shift aligning frame 15 with frame 0, searched on the central crop.
        ref = v[i, 0, m:-m, m:-m]
        errs = {}
        for sy in range(-m, m + 1):
            for sx in range(-m, m + 1):
                cur = v[i, last, m + sy:cfg.height - m + sy, m + sx:cfg.width - m + sx]
                errs[(sx, sy)] = (cur - ref).abs().mean().item()
        sx, sy = min(errs, key=errs.get)
        expect = p.pan[i] * last
        assert abs(sx - expect[0]) <= 1.0 and abs(sy - expect[1]) <= 1.0, (sx, sy, expect)
        # A moving background changes frames far from any object.
        assert errs[(0, 0)] > 2 * errs[(sx, sy)]


def test_static_background_is_exactly_redundant_and_noise_is_not():
    p = ds.sample_params(range(4), seed=6, cfg=CLEAN)
    v = ds.render(p, CLEAN)[:, 0]
    # Far corner rows of a clean static clip never change ...
    t = np.arange(CFG.frames)
    cy = p.start[:, 0, 1, None] + p.velocity[:, 0, 1, None] * t
    for i in range(4):
        far = 0 if cy[i].min() > 28 else CFG.height - 1                   # row away from target
        assert (v[i, :, far] == v[i, 0, far]).all()
    # ... while sensor noise (default level) changes them: redundancy is not free.
    cfg = replace(CLEAN, noise=CFG.noise)
    noisy = ds.make_split(4, seed=6, cfg=cfg)[0][:, 0].to(torch.int16)
    for i in range(4):
        far = 0 if cy[i].min() > 28 else CFG.height - 1
        rows = noisy[i, :, far]
        assert (rows[1:] != rows[:-1]).float().mean() > 0.5


def test_shapes_are_distinct():
    yy, xx = torch.meshgrid(torch.arange(-16.0, 17.0), torch.arange(-16.0, 17.0), indexing="ij")
    masks = [(ds._sdf(torch.tensor(s), xx, yy, torch.tensor(9.0)) < 0) for s in range(4)]
    areas = [int(m.sum()) for m in masks]
    # Comparable areas (size is not the class cue) ...
    assert max(areas) < 1.25 * min(areas), areas
    # ... but different silhouettes (square vs disc is the closest pair, ~20 %).
    for a in range(4):
        for b in range(a + 1, 4):
            assert (masks[a] ^ masks[b]).sum() > 0.15 * min(areas), (a, b)


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VidT(VidTConfig()).eval()


def test_config_geometry():
    c = VidTConfig()
    assert (c.n_t, c.n_s, c.num_tokens, c.head_dim, c.tubelet_dim) == (8, 49, 392, 32, 128)
    with pytest.raises(ValueError):
        VidTConfig(frames=15)
    with pytest.raises(ValueError):
        VidTConfig(dim=65)


def test_forward_shape_and_no_cls_token(model, small_split):
    x = ds.to_float(small_split[0][:3])
    c = model.cfg
    assert model(x).shape == (3, c.num_classes)
    tokens = model.tokens(x)
    assert tokens.shape == (3, c.n_t * c.n_s, c.dim)                         # no extra token
    assert model.pos_embed.shape == (1, c.n_t * c.n_s, c.dim)
    assert not any("cls" in n for n, _ in model.named_parameters())


def test_tubelet_token_order_is_frame_major():
    c = VidTConfig()
    t, y, x = torch.meshgrid(torch.arange(c.frames), torch.arange(c.height),
                             torch.arange(c.width), indexing="ij")
    code = (t * 10000 + y * 100 + x).to(torch.float64)[None, None]         # [1, 1, T, H, W]
    tok = tubelets(code, c).reshape(1, c.n_t, c.n_s, c.tubelet_dim)
    rows, cols = c.grid
    for f in (0, 3, 7):
        for s in (0, 8, 48):
            vec = tok[0, f, s]
            r, q = divmod(s, cols)
            # First element: (dt, dy, dx) = 0; then dx fastest, dy, then dt.
            assert vec[0] == (f * c.tubelet) * 10000 + r * c.patch * 100 + q * c.patch
            assert vec[1] - vec[0] == 1 and vec[c.patch] - vec[0] == 100
            assert vec[c.patch * c.patch] - vec[0] == 10000
    assert tok.shape[2] == rows * cols


def test_embedding_equals_conv3d(model, small_split):
    c = model.cfg
    x = (ds.to_float(small_split[0][:2]) - c.input_mean) / c.input_std
    w = model.embed.proj.weight.reshape(c.dim, c.in_chans, c.tubelet, c.patch, c.patch)
    ref = F.conv3d(x, w, model.embed.proj.bias, stride=(c.tubelet, c.patch, c.patch))
    ref = ref.flatten(2).transpose(1, 2)                                    # [B, n_t*n_s, d]
    torch.testing.assert_close(model.embed(x), ref, rtol=1e-4, atol=1e-5)


def test_changing_one_frame_group_changes_only_its_tokens(model, small_split):
    c = model.cfg
    x = ds.to_float(small_split[0][:1])
    y = x.clone()
    y[:, :, 2 * c.tubelet:3 * c.tubelet] += 0.1                              # token frame 2
    d = (model.tokens(y) - model.tokens(x)).abs().sum(-1).reshape(c.n_t, c.n_s)
    assert (d[2] > 0).all()
    assert (d[torch.arange(c.n_t) != 2] == 0).all()


def test_mean_pooling_is_token_permutation_invariant(model, small_split):
    x = model.tokens(ds.to_float(small_split[0][:2]))
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))
    run = lambda z: model.head_forward(torch.nn.Sequential(*model.blocks)(z))  # noqa: E731
    torch.testing.assert_close(run(x[:, perm]), run(x), rtol=1e-4, atol=1e-5)


def test_return_keys(model, small_split):
    c = model.cfg
    x = ds.to_float(small_split[0][:2])
    logits, keys = model(x, return_keys=True)
    torch.testing.assert_close(logits, model(x))
    assert len(keys) == c.depth
    assert all(k.shape == (2, c.heads, c.num_tokens, c.head_dim) for k in keys)
    # Block 0's keys are rows d..2d of its qkv projection applied to LN1(tokens).
    blk = model.blocks[0]
    h = blk.norm1(model.tokens(x))
    k = F.linear(h, blk.attn.qkv.weight[c.dim:2 * c.dim], blk.attn.qkv.bias[c.dim:2 * c.dim])
    torch.testing.assert_close(keys[0], k.reshape(2, -1, c.heads, c.head_dim).transpose(1, 2))


def test_observe_hook_sees_every_named_point(model, small_split):
    c = model.cfg
    x = ds.to_float(small_split[0][:2])
    seen = []
    logits = model(x, observe=lambda block, name, t: seen.append((block, name, t)))
    assert torch.equal(logits, model(x))                    # observing changes nothing
    points = ["ln1", "q", "k", "v", "o", "resid", "ln2", "fc1", "gelu", "resid"]
    assert [(b, n) for b, n, _ in seen] == ([(-1, "resid")]
                                            + [(i, n) for i in range(c.depth) for n in points]
                                            + [(c.depth, "norm")])
    # Block 0's points are its intermediate tensors.
    t = {n: v for b, n, v in seen if b == 0 and n != "resid"}
    blk, x0, x1 = model.blocks[0], seen[0][2], seen[6][2]      # tokens, after attention
    assert torch.equal(t["ln1"], blk.norm1(x0))
    assert torch.equal(x1, x0 + blk.attn.proj(t["o"]))
    assert torch.equal(t["gelu"], F.gelu(blk.mlp.fc1(blk.norm2(x1))))
    assert torch.equal(seen[-1][2], model.norm(seen[-2][2]))


def test_prune_hook_sees_every_block(model, small_split):
    x = ds.to_float(small_split[0][:2])
    calls = []

    def prune(block, z, keys):
        calls.append((block, z.shape[1], keys.shape[2]))
        return z[:, ::2]
    logits = model(x, prune=prune)
    n = model.cfg.num_tokens
    assert calls == [(i, n >> i, n >> i) for i in range(model.cfg.depth)]
    z = model.tokens(x)
    for blk in model.blocks:
        z = blk(z)[:, ::2]
    assert torch.equal(logits, model.head_forward(z))


def test_blocks_accept_fewer_tokens(model):
    # Token pruning shrinks N; a block must work on any token count.
    z = torch.randn(2, 100, model.cfg.dim)
    assert model.blocks[1](z).shape == (2, 100, model.cfg.dim)


def test_sincos_pos_embed_is_distinct_per_token():
    pe = sincos_pos_embed(VidTConfig())
    assert pe.shape == (392, 64) and pe.abs().max() <= 1.0
    assert torch.cdist(pe, pe).add(torch.eye(392) * 10).min() > 0.1


def test_overfit_smoke(small_split):
    torch.manual_seed(0)
    cfg = VidTConfig(depth=2)
    model = VidT(cfg)
    x, y = ds.to_float(small_split[0][:8]), small_split[1][:8]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isclose(losses[0], math.log(16), rel_tol=0.15)               # starts at chance
    assert losses[-1] < 0.5 * losses[0], losses
