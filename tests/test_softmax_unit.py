"""Softmax unit under Amaranth's simulator, bit-exact with :func:`golden.contract.softmax_row`."""

import gc
import random

import pytest
from amaranth.sim import Simulator

from golden import contract
from hw.config import preset
from hw.softmax_unit import SoftmaxUnit
from sim.amaranth_streams import StreamStalls, get_until, put_all, to_python
from sim.scoreboard import check_equal

SEED = 4242
#: exp2_neg's clamp: from an integer part of 16 on, t gives 0 without a shift.
EXP_DOMAIN = 16 << contract.EXP2_FRAC_BITS

TINY = preset("tiny")
V4N32 = TINY.replace(lanes=4, requant_lanes=1, max_tokens=32, name="v4n32")
V8N16 = TINY.replace(max_tokens=16, name="v8n16")


def block(rows, kept=None, mult=1 << 15, shift=15):
    """A row block: ``rows[l]`` are lane ``l``'s scores (all of one length)."""
    if kept is None:
        kept = [[True] * len(r) for r in rows]
    assert len({len(r) for r in rows} | {len(k) for k in kept}) == 1
    return {"rows": rows, "kept": kept, "mult": mult, "shift": shift}


def beats_of(blk):
    n = len(blk["rows"][0])
    return [{"score": [r[j] for r in blk["rows"]],
             "kept": sum(int(k[j]) << l for l, k in enumerate(blk["kept"])),
             "last": int(j == n - 1)} for j in range(n)]


def expected(cfg, blocks):
    """Output beats of the contract; an over-long block keeps its first ``max_tokens``."""
    want = []
    for blk in blocks:
        n = min(len(blk["rows"][0]), cfg.max_tokens)
        probs = [contract.softmax_row(r[:n], k[:n], blk["mult"], blk["shift"])
                 for r, k in zip(blk["rows"], blk["kept"])]
        want += [{"prob": [p[j] for p in probs], "last": int(j == n - 1)} for j in range(n)]
    return want


class _Observed(SoftmaxUnit):
    """The unit with a handle on its score buffer, to read the written-back exponents."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        self.buf = m.submodules.buf
        return m


def simulate(cfg, blocks, seed, *, stall=0.0, after_block=None):
    """Run ``blocks`` through a fresh unit; return ``(output beats, error, monitor faults)``.

    ``mult``/``shift`` change to junk once a block's first beat is in (they must be latched).
    ``after_block(ctx, buf, b)``, if given, runs when block ``b``'s last output has been taken.
    """
    dut = _Observed(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    want_len = [min(len(b["rows"][0]), cfg.max_tokens) for b in blocks]
    got, faults, result = [], [], {}
    in_stalls = StreamStalls(seed, stall) if stall else None
    out_stalls = StreamStalls(seed + 1, stall) if stall else None
    junk = random.Random(seed + 2)

    async def source(ctx):
        for blk in blocks:
            beats = beats_of(blk)
            ctx.set(dut.mult, blk["mult"])
            ctx.set(dut.shift, blk["shift"])
            await put_all(ctx, dut.i, beats[:1], in_stalls)
            ctx.set(dut.mult, junk.randrange(contract.REQ_MULT.max + 1))
            ctx.set(dut.shift, junk.randrange(contract.REQ_SHIFT.max + 1))
            await put_all(ctx, dut.i, beats[1:], in_stalls)
        result["sent"] = True

    async def sink(ctx):
        for b, n in enumerate(want_len):
            got.extend(await get_until(ctx, dut.o, lambda r, n=n: len(r) >= n, out_stalls,
                                       timeout=20_000))
            if after_block is not None:
                await after_block(ctx, dut.buf, b)
        for _ in range(3):
            await ctx.tick()
        result["error"] = ctx.get(dut.error)
        if not result.get("sent"):
            faults.append("input beats left unconsumed")
        if ctx.get(dut.busy) or ctx.get(dut.o.valid) or not ctx.get(dut.i.ready):
            faults.append("unit not idle after the last block")

    async def monitor(ctx):
        # Input is refused from a block's last input beat until its last output is taken,
        # and busy covers the whole time a block is inside.
        closed, inside = False, False
        async for _, _, iv, ir, il, ov, ordy, ol, busy in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.i.payload.last, dut.o.valid, dut.o.ready,
                dut.o.payload.last, dut.busy):
            if inside and not busy:
                faults.append("busy low while a block is inside")
            if iv and ir:
                if closed:
                    faults.append("input taken before the previous block left")
                inside = True
                closed = closed or bool(il)
            if ov and ordy and ol:
                closed = inside = False

    # The sink times out on a hung unit; the source would wait forever, so it is background.
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.add_testbench(monitor, background=True)
    sim.run()
    if not result.get("sent"):
        # Close the stuck source now rather than at some later garbage collection (Amaranth
        # then raises from inside whatever runs, e.g. pytest's traceback rendering).
        del sim, source
        gc.collect()
    return got, result["error"], faults


def check(cfg, blocks, seed, *, stall=0.0, error=0, after_block=None):
    got, err, faults = simulate(cfg, blocks, seed, stall=stall, after_block=after_block)
    check_equal(got, expected(cfg, blocks), what="softmax beat", seed=seed)
    assert faults == [], "seed {}: {}".format(seed, faults)
    assert err == error, "seed {}: error flag {}".format(seed, err)
    return got


def span_for(mult, shift, reach=EXP_DOMAIN):
    """Score spread whose distances give exponents ``t`` up to about ``reach``."""
    return max(1, (reach << shift) // max(1, mult) // 2)


def random_row(rng, n, span, fmt):
    base = rng.randint(fmt.min + span, fmt.max - span)
    return [base + rng.randint(-span, span) for _ in range(n)]


# --- 1. The exponent domain, exhaustively. ----------------------------------------------------

def test_exponent_domain_exhaustive():
    # mult / 2**shift == 1: t is the score distance. Every lane sees every distance 0 ..
    # EXP_DOMAIN + 7 (every table entry under every integer shift, through to zero), in its own
    # order; each block holds its row maximum (distance 0) first.
    cfg = TINY
    seed = SEED + 1
    rng = random.Random(seed)
    acc = cfg.acc_format
    per_block = cfg.max_tokens - 1
    distances = list(range(1, EXP_DOMAIN + 8))
    lanes = []
    for l in range(cfg.lanes):
        order = distances[:]
        rng.shuffle(order)
        lanes.append(order)
    blocks = []
    for b in range(0, len(distances), per_block):
        rows = []
        for l in range(cfg.lanes):
            top = rng.randint(acc.min + EXP_DOMAIN + 8, acc.max)
            chunk = lanes[l][b:b + per_block]
            rows.append([top] + [top - d for d in chunk])
        blocks.append(block(rows, mult=1 << 15, shift=15))

    # The probabilities are 8-bit and hide small exponents, so the written-back e values are
    # read out of the buffer as well and compared with exp2_neg, for every entry and lane.
    seen = [set() for _ in range(cfg.lanes)]
    bad = []

    async def check_e(ctx, buf, b):
        rows = blocks[b]["rows"]
        for j in range(len(rows[0])):
            word = to_python(ctx.get(buf.data[j]))
            for l, row in enumerate(rows):
                t = max(row) - row[j]
                seen[l].add(t)
                if word["value"][l] != contract.exp2_neg(t):
                    bad.append((b, j, l, t, word["value"][l]))

    check(cfg, blocks, seed, after_block=check_e)
    assert bad == [], "seed {}: e mismatches (block, beat, lane, t, e): {}".format(seed, bad[:5])
    assert all(s == set(range(EXP_DOMAIN + 8)) for s in seen)


# --- 2. Every row length. ---------------------------------------------------------------------

def test_every_row_length():
    cfg = V4N32
    seed = SEED + 2
    rng = random.Random(seed)
    acc = cfg.acc_format
    blocks = []
    for n in range(1, cfg.max_tokens + 1):
        # Equal scores: sum = n * EXP2_ONE, probability 1/n everywhere.
        equal = [[rng.randint(acc.min, acc.max)] * n for _ in range(cfg.lanes)]
        blocks.append(block(equal, mult=rng.randint(1, contract.REQ_MULT.max),
                            shift=rng.randint(0, contract.REQ_SHIFT.max)))
        mult, shift = contract.quantize_multiplier(rng.uniform(0.05, 20.0))
        span = span_for(mult, shift)
        blocks.append(block([random_row(rng, n, span, acc) for _ in range(cfg.lanes)],
                            mult=mult, shift=shift))
    got = check(cfg, blocks, seed)
    assert sum(b["last"] for b in got) == len(blocks)
    assert {max(b["prob"]) for b in got} >= {contract.PROB.max, 8}     # n = 1 and n = 32


# --- 3. Kept patterns. ------------------------------------------------------------------------

def test_kept_patterns():
    cfg = V8N16
    seed = SEED + 3
    rng = random.Random(seed)
    acc = cfg.acc_format
    n_max = cfg.max_tokens
    blocks = []
    for b in range(14):
        n = rng.randint(1, n_max) if b > 1 else n_max
        kept = []
        for l in range(cfg.lanes):
            kind = (b + l) % 6 if b else 0
            if kind == 0:
                k = [False] * n                              # nothing kept: zeros
            elif kind == 1:
                one = rng.randrange(n)
                k = [j == one for j in range(n)]             # a single kept entry
            elif kind == 2:
                cut = rng.randint(1, n)
                k = [j < cut for j in range(n)]              # a prefix
            elif kind == 3:
                k = [True] * n
            else:
                k = [rng.random() < 0.5 for _ in range(n)]   # random mask
            kept.append(k)
        # Dropped entries are often the largest: they must not set the maximum.
        mult, shift = contract.quantize_multiplier(rng.uniform(0.1, 10.0))
        span = span_for(mult, shift)
        rows = []
        for k in kept:
            row = random_row(rng, n, span, acc)
            rows.append([s if k[j] else acc.saturate(s + rng.randint(0, 4 * span))
                         for j, s in enumerate(row)])
        blocks.append(block(rows, kept, mult, shift))
    got = check(cfg, blocks, seed, stall=0.3)
    assert all(p == 0 for b in got[:n_max] for p in b["prob"])       # block 0: nothing kept


# --- 4. Extremes. -----------------------------------------------------------------------------

@pytest.mark.parametrize("mult,shift", [
    (contract.REQ_MULT.max, 0), (contract.REQ_MULT.max, contract.REQ_SHIFT.max),
    (1, 0), (1, 1), (0, 0),
    # the largest distance gives t near EXP_DOMAIN: mid-range exponents at full width
    (contract.REQ_MULT.max, V8N16.acc_format.bits + 6),
])
def test_extremes(mult, shift):
    cfg = V8N16
    acc = cfg.acc_format
    seed = SEED + 4 + mult + shift
    rng = random.Random(seed)
    n = cfg.max_tokens
    edge = [acc.min, acc.max, acc.min + 1, acc.max - 1, 0, -1, 1]
    rows = [
        [acc.max] + [acc.min] * (n - 1),                       # distance 2**acc_bits - 1
        [acc.min] * n,
        [acc.max] * n,
        [rng.choice(edge) for _ in range(n)],
        [acc.max - j for j in range(n)],                       # distances 0 .. n-1
        [acc.min + j * j for j in range(n)],
        [rng.randint(acc.min, acc.max) for _ in range(n)],
        [acc.max - rng.randint(0, 3) for _ in range(n)],
    ]
    kept = [[True] * n] * 7 + [[j % 2 == 0 for j in range(n)]]
    blocks = [block(rows, kept, mult, shift), block([r[:5] for r in rows],
                                                    [k[:5] for k in kept], mult, shift)]
    check(cfg, blocks, seed)


# --- 5. Stalls, back-to-back blocks. ----------------------------------------------------------

@pytest.mark.parametrize("stall", [0.0, 0.5, 0.8])
def test_back_to_back_blocks_with_stalls(stall):
    cfg = V8N16
    seed = SEED + 5 + int(stall * 10)
    rng = random.Random(seed)
    acc = cfg.acc_format
    blocks = []
    for b in range(8):
        n = rng.randint(1, cfg.max_tokens)
        mult, shift = contract.quantize_multiplier(rng.uniform(0.02, 50.0))
        kept = [[rng.random() < 0.8 for _ in range(n)] for _ in range(cfg.lanes)]
        span = span_for(mult, shift)
        blocks.append(block([random_row(rng, n, span, acc) for _ in range(cfg.lanes)],
                            kept, mult, shift))
    check(cfg, blocks, seed, stall=stall)


# --- 6. Over-long block. ----------------------------------------------------------------------

def test_overlong_block_sets_error_and_recovers():
    cfg = TINY.replace(max_tokens=8, name="v8n8")
    seed = SEED + 6
    rng = random.Random(seed)
    acc = cfg.acc_format
    N = cfg.max_tokens
    mult, shift = contract.quantize_multiplier(0.7)

    def rnd(n):
        return block([random_row(rng, n, 500, acc) for _ in range(cfg.lanes)], None,
                     mult, shift)
    # Exactly max_tokens beats is no error.
    check(cfg, [rnd(N)], seed)
    # The surplus beats (made the largest, so that using them would show) are dropped; the
    # block is closed by its last beat; the next blocks are exact.
    long = rnd(N + 3)
    for r in long["rows"]:
        r[N:] = [max(r) + 1000] * 3
    check(cfg, [rnd(3), long, rnd(N), rnd(1)], seed, error=1, stall=0.3)
    check(cfg, [rnd(N + 1)], seed + 1, error=1)


# --- 7. The benchmark model's constants. ------------------------------------------------------

@pytest.fixture(scope="module")
def benchmark_constants():
    from golden import benchmark
    return [(b.softmax_mult, b.softmax_shift) for b in benchmark.int_model().blocks]


def test_benchmark_constants(benchmark_constants):
    cfg = preset("vidt").replace(max_tokens=64, name="vidt64")
    seed = SEED + 7
    rng = random.Random(seed)
    acc = cfg.acc_format
    blocks = []
    for mult, shift in benchmark_constants:
        contract.REQ_MULT.check(mult)
        contract.REQ_SHIFT.check(shift)
        # Scores whose distances reach past the exponent domain (t up to ~1.5 EXP_DOMAIN).
        span = span_for(mult, shift, 3 * EXP_DOMAIN // 2)
        for n in (49, cfg.max_tokens):
            kept = [[rng.random() < 0.9 for _ in range(n)] for _ in range(cfg.lanes)]
            rows = [random_row(rng, n, span // rng.choice([1, 4, 16]), acc)
                    for _ in range(cfg.lanes)]
            blocks.append(block(rows, kept, mult, shift))
    got = check(cfg, blocks, seed, stall=0.2)
    assert len({b["prob"][0] for b in got}) > 10          # not a degenerate distribution


def test_converts_to_verilog():
    from amaranth.back import verilog
    text = verilog.convert(SoftmaxUnit(preset("vidt")), name="softmax_unit")
    assert "module softmax_unit" in text
