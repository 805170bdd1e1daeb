"""Keep selection unit under Amaranth's simulator, bit-exact with the golden keep policy
(:meth:`golden.subvector.SubvectorAttention.keep`: stable descending sort, top ``K``)."""

import gc
import math
import random

import pytest
import torch
from amaranth.hdl import Shape, signed, unsigned
from amaranth.sim import Simulator

from golden.subvector import SubvectorAttention
from hw.arith import shape_of
from hw.config import preset
from hw.keep_select import KeepSelect, keep_count
from sim.amaranth_streams import StreamStalls, get_until, put_all
from sim.scoreboard import check_equal

SEED = 5150
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_tokens=32, max_d=16, max_heads=2,
                             name="ks")
NARROW = signed(8)
WIDE = None                     # the accumulator format's shape (26 bits for CFG)


def resolved(shape):
    return shape_of(CFG.acc_format) if shape is None else Shape.cast(shape)


def shape_range(shape):
    shape = resolved(shape)
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def golden_mask(scores, k):
    """The two lines of golden's keep policy, on one row of scores (``k`` already clamped)."""
    pred = torch.tensor(scores, dtype=torch.int64)
    order = torch.sort(pred, dim=-1, descending=True, stable=True).indices[..., :k]
    return sum(1 << int(j) for j in order)


def blk(scores, keep, head_last=0, n=None):
    return {"scores": list(scores), "keep": keep, "head_last": head_last,
            "n": len(scores) if n is None else n}


def expected(cfg, blocks):
    """Output beats: the clamping rules of the unit's docstring around golden's sort."""
    want = []
    for b in blocks:
        n = min(b["n"], cfg.max_tokens, len(b["scores"]))
        k = min(max(b["keep"], 1), n)
        want.append({"mask": golden_mask(b["scores"][:n], k) if n else 0,
                     "last": b["head_last"]})
    return want


def beats_of(cfg, b, lo, hi, rng):
    """Input beats; lanes past the scores carry junk (extremes), which must be ignored."""
    V = cfg.lanes
    s = b["scores"]
    beats = []
    count = -(-len(s) // V)
    for w in range(count):
        lanes = [s[w * V + l] if w * V + l < len(s) else rng.choice([lo, hi])
                 for l in range(V)]
        beats.append({"score": lanes, "last": int(w == count - 1),
                      "head_last": b["head_last"] if w == count - 1 else rng.randint(0, 1)})
    return beats


def simulate(cfg, shape, blocks, seed, *, stall=0.0):
    """Run ``blocks`` through a fresh unit: ``(output beats, input handshake cycles, output
    handshake cycles, faults)``. ``n``/``keep`` turn to junk once a block's last beat is in."""
    dut = KeepSelect(cfg, shape)
    lo, hi = shape_range(shape)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    in_stalls = StreamStalls(seed + 1, stall) if stall else None
    out_stalls = StreamStalls(seed + 2, stall) if stall else None
    bits = dut.score_shape.width
    words = max(1, -(-cfg.max_tokens // cfg.lanes))
    # Watchdog (cycles of the whole run): a generous multiple of the documented cost.
    timeout = int(2 * len(blocks) * ((bits + 1) * words + 2) * (1 + 4 * stall)) + 100
    got, ins, outs, faults, result = [], [], [], [], {}

    async def source(ctx):
        for b in blocks:
            ctx.set(dut.n, b["n"])
            ctx.set(dut.keep, b["keep"])
            await put_all(ctx, dut.i, beats_of(cfg, b, lo, hi, rng), in_stalls)
            ctx.set(dut.n, rng.randrange(cfg.max_tokens + 1))
            ctx.set(dut.keep, rng.randrange(cfg.max_tokens + 1))
        result["sent"] = True

    async def sink(ctx):
        got.extend(await get_until(ctx, dut.o, lambda r: len(r) >= len(blocks), out_stalls,
                                   timeout=timeout))
        for _ in range(3):
            await ctx.tick()
        if not result.get("sent"):
            faults.append("input beats left unconsumed")
        if ctx.get(dut.busy) or ctx.get(dut.o.valid) or not ctx.get(dut.i.ready):
            faults.append("unit not idle after the last block")

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, ov, ordy in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready):
            if iv and ir:
                ins.append(cycle)
            if ov and ordy:
                outs.append(cycle)
            cycle += 1

    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.add_testbench(monitor, background=True)
    sim.run()
    if not result.get("sent"):
        del sim, source
        gc.collect()
    return got, ins, outs, faults


def check(cfg, shape, blocks, seed, *, stall=0.0):
    got, ins, outs, faults = simulate(cfg, shape, blocks, seed, stall=stall)
    check_equal(got, expected(cfg, blocks), what="keep mask", seed=seed)
    assert faults == [], "seed {}: {}".format(seed, faults)
    return got, ins, outs


# --- 1. keep_count against golden. -------------------------------------------------------------

def test_keep_count_matches_golden_formula():
    rng = random.Random(SEED)
    rhos = [1.0, 0.5, 0.25, 0.1, 0.3, 0.7, 1 / 3, 2 / 3, 0.2, 0.9, 1e-9, 0.999999]
    rhos += [rng.uniform(1e-6, 1.0) for _ in range(60)]
    for n in range(0, 600):
        for rho in rhos:
            want = min(n, max(1, math.ceil(rho * n)))
            assert keep_count(n, rho) == want, (n, rho)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError):
            keep_count(4, bad)
    with pytest.raises(ValueError):
        keep_count(-1, 0.5)


def test_keep_count_matches_golden_keep():
    # Through SubvectorAttention.keep itself: every query row keeps keep_count(N, rho) columns.
    torch.manual_seed(SEED)
    for n in (1, 2, 3, 5, 7, 8, 13, 16, 31, 49):
        q = torch.randint(-128, 128, (1, 1, n, 4))
        k = torch.randint(-128, 128, (1, 1, n, 4))
        for rho in (1.0, 0.5, 0.25, 0.1, 1 / 3, 0.77, 0.01):
            mask, _ = SubvectorAttention(4, rho).keep(0, q, k)
            if rho == 1.0:      # dense attention: no mask, every column
                assert mask is None and keep_count(n, rho) == n
                continue
            assert set(mask[0, 0].sum(-1).tolist()) == {keep_count(n, rho)}, (n, rho)


# --- 2. Narrow scores: every N, several K, tie-heavy and full-range scores. --------------------

def test_narrow_sweep_every_n():
    seed = SEED + 2
    rng = random.Random(seed)
    lo, hi = shape_range(NARROW)
    blocks = []
    for n in range(1, CFG.max_tokens + 1):
        ks = sorted({1, 2, max(1, n // 2), max(1, n - 1), n, rng.randint(1, n)})
        for i, k in enumerate(ks):
            kind = (n + i) % 4
            if kind == 0:
                s = [rng.randint(lo, hi) for _ in range(n)]
            elif kind == 1:
                s = [rng.randint(-2, 2) for _ in range(n)]               # many ties
            elif kind == 2:
                s = [rng.choice([lo, hi, lo + 1, hi - 1, 0, -1]) for _ in range(n)]
            else:
                s = [rng.randint(lo, lo + 3) for _ in range(n)]          # all negative
            blocks.append(blk(s, k, head_last=rng.randint(0, 1)))
    check(CFG, NARROW, blocks, seed)


def test_exhaustive_two_bit_scores():
    # Every vector of 2-bit signed scores for N <= 5 (two words when N > 4); every K up to
    # N = 4, then K cycling through 1..5.
    import itertools
    cfg = CFG.replace(max_tokens=6, name="v4n6")
    seed = SEED + 8
    blocks = [blk(s, k) for n in range(1, 5) for s in itertools.product(range(-2, 2), repeat=n)
              for k in range(1, n + 1)]
    blocks += [blk(s, i % 5 + 1)
               for i, s in enumerate(itertools.product(range(-2, 2), repeat=5))]
    check(cfg, signed(2), blocks, seed)


# --- 3. Crafted cases. --------------------------------------------------------------------------

def crafted(lo, hi, rng):
    T = CFG.max_tokens
    z = 0 if lo < 0 else (lo + hi + 1) // 2       # the sign boundary of a signed shape
    return [
        blk([7] * T, 5),                                   # all equal: the 5 lowest columns
        blk([lo] * T, 1),                                  # all most negative, K = 1
        blk([hi] * 9, 9),                                  # all most positive, K = N
        blk([3], 1), blk([lo], 1), blk([hi], 1),           # N = 1
        blk([lo] * 10 + [lo + 1] + [lo] * 5, 1),           # single max among minima
        blk([hi - 1] * 6 + [hi] + [hi - 1] * 6, 2),        # max, then the lowest tie
        blk([z + d for d in (0, -1, 0, -1, 0, 1, -1, 0, 0)], 4),            # duplicates around the threshold
        blk([lo, hi, z - 1, z, z + 1, lo + 1, hi - 1] * 3, 10),   # sign boundary
        blk([5, 5, 4, 4, 5, 4, 5, 4, 4, 5, 5], 6),         # ties straddle a word boundary
        blk([rng.randint(lo, hi) for _ in range(T)], T),   # N = max_tokens, K = N
        blk([z + rng.randint(-3, 3) for _ in range(T)], T - 1),
        blk([rng.randint(lo, hi) for _ in range(T)], 1),
        blk([z - rng.randint(0, 1) for _ in range(T - 1)], 16, head_last=1),
        # clamping: K = 0 keeps one, K > N keeps all, n = 0 keeps none
        blk([1, 2, 3, 2, 1], 0), blk([1, 2, 3], 3 + 7), blk([4, 4, 4], 3 + 29, head_last=1),
        blk([9, 9, 9, 9, 9], 2, n=0),
        # n below the columns sent (a padded block): columns >= n are ignored
        blk([0, 1, 2, 3, hi, hi, hi, hi], 2, n=3),
        # a short block (fewer beats than n needs): the absent columns do not count
        blk([1, 3, 3, 2], 3, n=20),
        # beats past the buffer (n = max_tokens + 4): dropped
        blk([0] * T + [hi] * 4, 3, n=T + 4),
    ]


@pytest.mark.parametrize("shape", [NARROW, WIDE, unsigned(5)], ids=["s8", "acc", "u5"])
def test_crafted_cases(shape):
    seed = SEED + 3
    lo, hi = shape_range(shape)
    check(CFG, shape, crafted(lo, hi, random.Random(seed)), seed)


# --- 4. Wide (accumulator) scores, random, back to back with stalls. ----------------------------

@pytest.mark.parametrize("stall", [0.0, 0.4, 0.8])
def test_wide_random_back_to_back(stall):
    seed = SEED + 4 + int(stall * 10)
    rng = random.Random(seed)
    lo, hi = shape_range(WIDE)
    blocks = []
    for b in range(10):
        n = rng.choice([1, 3, 4, 5, 17, 31, CFG.max_tokens, rng.randint(1, CFG.max_tokens)])
        span = rng.choice([2, 100, 1 << 20, hi])
        centre = rng.randint(lo + span, hi - span) if span < hi else 0
        s = [max(lo, min(hi, centre + rng.randint(-span, span))) for _ in range(n)]
        blocks.append(blk(s, keep_count(n, rng.choice([0.1, 0.25, 0.5, 1.0, rng.random()])),
                          head_last=int(b % 3 == 2)))
    check(CFG, WIDE, blocks, seed, stall=stall)


def test_narrow_stalls_other_lane_count():
    cfg = preset("tiny").replace(lanes=8, max_tokens=20, max_d=16, max_heads=2, name="v8n20")
    seed = SEED + 5
    rng = random.Random(seed)
    blocks = [blk([rng.randint(-4, 4) for _ in range(n)], rng.randint(0, n + 2),
                  head_last=rng.randint(0, 1)) for n in (1, 7, 8, 9, 15, 16, 20, 20, 13)]
    check(cfg, NARROW, blocks, seed, stall=0.5)


# --- 5. Cross-check with golden's predictor and keep policy on real q, k. -----------------------

def test_golden_predictor_rows():
    cfg = CFG
    seed = SEED + 6
    torch.manual_seed(seed)
    V, hd = cfg.lanes, cfg.head_dim
    for n, rho in ((32, 0.25), (13, 0.5), (7, 0.3), (1, 1.0), (30, 0.1)):
        q = torch.randint(-128, 128, (1, 1, n, hd))
        k = torch.randint(-128, 128, (1, 1, n, hd))
        k[..., 5:9, :] = k[..., 4:5, :]           # equal keys: tied predicted scores
        att = SubvectorAttention(V, rho)
        pred, _, _ = att.predict(q, k)
        mask, _ = att.keep(0, q, k)
        if mask is None:        # rho = 1: dense, every column kept
            mask = torch.ones(1, 1, n, n, dtype=torch.bool)
        rows = pred[0, 0].tolist()
        kk = keep_count(n, rho)
        blocks = [blk(r, kk, head_last=int(b == len(rows) - 1)) for b, r in enumerate(rows)]
        got, _, _ = check(cfg, WIDE, blocks, seed)
        for b, beat in enumerate(got):
            want = sum(1 << j for j in range(n) if mask[0, 0, b * V, j])
            assert beat["mask"] == want, "seed {}: n {} block {}".format(seed, n, b)
        assert [beat["last"] for beat in got] == [0] * (len(rows) - 1) + [1]


# --- 6. Cycles per block. -----------------------------------------------------------------------

@pytest.mark.parametrize("shape,n", [(NARROW, 32), (NARROW, 13), (WIDE, 32), (WIDE, 1)])
def test_cycles_per_block(shape, n):
    seed = SEED + 7
    rng = random.Random(seed)
    lo, hi = shape_range(shape)
    blocks = [blk([rng.randint(lo, hi) for _ in range(n)], max(1, n // 4)) for _ in range(3)]
    got, ins, outs = check(CFG, shape, blocks, seed)
    B = resolved(shape).width
    W = -(-n // CFG.lanes)
    firsts = ins[::W]
    lasts = ins[W - 1::W]
    assert [b - a for a, b in zip(firsts, firsts[1:])] == [(B + 1) * W + 2] * 2, (ins, outs)
    # The output beat is valid (and taken at once) B * W + 2 cycles after the last input beat.
    assert [o - l for l, o in zip(lasts, outs)] == [B * W + 2] * 3, (ins, outs)
    assert [f - o for o, f in zip(outs, firsts[1:])] == [1] * 2, (ins, outs)


def test_converts_to_verilog():
    from amaranth.back import verilog
    text = verilog.convert(KeepSelect(preset("tiny")), name="keep_select")
    assert "module keep_select" in text
