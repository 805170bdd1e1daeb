"""LayerNorm stage under Amaranth's simulator, bit-exact with :func:`golden.contract.layernorm_row`:
random and edge rows, the benchmark model's own constants and activations, stalls, framing
errors with recovery, and the row-statistics unit on its own."""

import math
import random

import pytest
from amaranth.sim import Simulator

from golden import contract
from hw.config import preset
from hw.layernorm import LayerNorm, RowStats, ln_param_words, ln_widths, stats_cycles
from hw.pipeline import Pipeline
from sim.amaranth_streams import get_until, put_all
from sim.driver import Plan, run_amaranth, run_amaranth_plans

SEED = 2718
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_heads=2, name="ln16")
RMIN, RMAX = contract.RESID.min, contract.RESID.max


def beats_of(cfg, rows):
    """Activation beats of RESID tokens ``rows``."""
    V = cfg.lanes
    return [{"data": row[s:s + V], "last": int(s + V == len(row))}
            for row in rows for s in range(0, len(row), V)]


def expected(cfg, rows, gamma, beta, mult, shift):
    out = [contract.layernorm_row(r, gamma, beta, mult, shift) for r in rows]
    return beats_of(cfg, out)


def plan(cfg, rows, gamma, beta, mult, shift, *, inputs=None, want=None, name="ln", layer=0,
         load=True):
    d = len(gamma)
    loading = [("pulse", "ln", ("reset_load",)),
               ("load", "ln.p_load", ln_param_words(cfg, gamma, beta))] if load else []
    return Plan(name, setup=[("write", "ln", "layer", layer)] + loading + [
        ("write", "ln", "d", d), ("write", "ln", "tokens", len(rows)),
        ("write", "ln", "mult", mult), ("write", "ln", "shift", shift),
        ("start", "ln", True)],
        inputs=[("i", beats_of(cfg, rows) if inputs is None else inputs)],
        outputs=[("o", expected(cfg, rows, gamma, beta, mult, shift) if want is None else want)],
        counters={"ln": {"tokens_out": len(rows)}}, done=["ln"], timeout=5_000)


def top(cfg):
    return Pipeline(cfg, [("ln", LayerNorm(cfg))])


def random_params(rng, d):
    gamma = [rng.randint(contract.WEIGHT.min, contract.WEIGHT.max) for _ in range(d)]
    beta = [rng.randint(contract.LN_BETA.min, contract.LN_BETA.max) for _ in range(d)]
    return gamma, beta


def edge_rows(rng, d):
    """Rows random data never produces: constant (sigma 0 -> 1), extreme spread, one outlier,
    tiny spread (largest reciprocal), alternating corners, exact powers of two."""
    return [[0] * d, [RMAX] * d, [RMIN] * d,
            [RMIN if j % 2 else RMAX for j in range(d)],
            [RMIN] + [RMAX] * (d - 1), [RMAX] + [RMIN] * (d - 1),
            [0] * (d - 1) + [1], [5] * (d - 1) + [4],
            [1 << (j % 15) for j in range(d)], [-(1 << (j % 16)) for j in range(d)],
            [rng.randint(-3, 3) for _ in range(d)]]


@pytest.mark.parametrize("d", [4, 8, 16])
def test_random_and_edge_rows_are_exact(d):
    rng = random.Random(SEED + d)
    gamma, beta = random_params(rng, d)
    rows = edge_rows(rng, d) + [[rng.randint(RMIN, RMAX) for _ in range(d)] for _ in range(6)]
    # A large shift with a small multiplier keeps outputs mostly unsaturated; a second
    # configuration saturates hard.
    for mult, shift in ((contract.REQ_MULT.max, 22), (1 << 15, 8)):
        run_amaranth(top(CFG), plan(CFG, rows, gamma, beta, mult, shift), seed=SEED + d,
                     stall=0.3)


def test_full_speed_and_stalled_outputs_agree_with_the_contract():
    rng = random.Random(SEED)
    gamma, beta = random_params(rng, 16)
    rows = [[rng.randint(-2000, 2000) for _ in range(16)] for _ in range(8)]
    # Stalls longer than a beat's lanes cycles back-pressure the whole reader pipeline.
    for stall, wait in ((0.0, 1), (0.6, 3), (0.5, 12)):
        run_amaranth(top(CFG), plan(CFG, rows, gamma, beta, 40000, 23), seed=SEED, stall=stall,
                     max_wait=wait)


def test_benchmark_constants_and_activations():
    """Block 0's LN1 of the trained benchmark model on the first tokens of a test clip."""
    from golden import benchmark
    q = benchmark.int_model()
    videos, _ = benchmark.clips(1)
    x = q.tokens(videos)[0]
    cfg = preset("vidt")
    ln = q.blocks[0].norm1
    rows = [[int(v) for v in x[t]] for t in (0, 1, 48, 391)]
    gamma, beta = [int(v) for v in ln.gamma], [int(v) for v in ln.beta]
    got = run_amaranth(top(cfg), plan(cfg, rows, gamma, beta, ln.mult, ln.shift), seed=SEED,
                       stall=0.2)
    # The golden model's own LayerNorm agrees with the contract on these rows.
    want = [[int(v) for v in r] for r in ln(x[[0, 1, 48, 391]])]
    assert [b["data"] for b in got["outputs"]["o"]] == [r[s:s + 8] for r in want
                                                          for s in range(0, 64, 8)]


def test_framing_errors_recover_and_the_next_run_is_exact():
    rng = random.Random(SEED + 1)
    d = 8
    gamma, beta = random_params(rng, d)
    good = [[rng.randint(-500, 500) for _ in range(d)] for _ in range(2)]
    short = beats_of(CFG, [good[0]])[:1]
    short[0] = dict(short[0], last=1)                    # last one beat early: padded
    long_ = beats_of(CFG, [good[1]])
    long_[-1] = dict(long_[-1], last=0)                  # no last: the extra beats are dropped
    long_ += [{"data": [7] * 4, "last": 0}, {"data": [9] * 4, "last": 1}]
    inputs = short + long_ + beats_of(CFG, [good[1]])
    padded = good[0][:4] + [0] * 4
    want = expected(CFG, [padded, good[1], good[1]], gamma, beta, 40000, 20)
    p = plan(CFG, [padded, good[1], good[1]], gamma, beta, 40000, 20, inputs=inputs, want=want)
    p.done = []
    # After CLEAR_ERROR the next run on the same hardware is exact and clean (the plan checks
    # DONE without error).
    p2 = plan(CFG, good, gamma, beta, 40000, 20)
    p2.setup = [("pulse", "ln", ("clear_error",))] + p2.setup
    res, _ = run_amaranth_plans(top(CFG), [p, p2], seed=SEED)
    regs = LayerNorm.registers
    st = regs.status(res["status"]["ln"])
    assert st.done and st.errors.token and not st.errors.config, regs.describe(st.as_value())


def test_layers_hold_their_own_parameters():
    """``max_layers`` 2: parameters loaded into layers 1 and 0, then runs on layers 1, 0 and 1
    again without reloading, each exact with its own gamma and beta; a START with ``layer`` =
    ``max_layers`` is refused (``config``) and the next run is exact."""
    rng = random.Random(SEED + 77)
    cfg = CFG.replace(max_layers=2, name="ln16_l2")
    params = [random_params(rng, 16) for _ in range(2)]
    rows = [[rng.randint(-2000, 2000) for _ in range(16)] for _ in range(3)]

    def run(layer, load):
        return plan(cfg, rows, *params[layer], 40000, 23, layer=layer, load=load,
                    name="layer{}".format(layer))
    refused = Plan("bad layer", setup=[
        ("write", "ln", "layer", 2), ("start", "ln", False), ("status", "ln", "bad"),
        ("pulse", "ln", ("clear_error",))])
    plans = [run(1, True), run(0, True), run(1, False), refused, run(0, False)]
    results = run_amaranth_plans(top(cfg), plans, seed=SEED, stall=0.2)
    st = LayerNorm.registers.status(results[3]["seen"]["bad"])
    assert st.errors.config and not st.running, LayerNorm.registers.describe(st.as_value())


@pytest.mark.parametrize("d,tokens", [(0, 1), (6, 1), (20, 1), (8, 0)])
def test_bad_settings_refuse_to_start(d, tokens):
    p = Plan("bad", setup=[("write", "ln", "d", d), ("write", "ln", "tokens", tokens),
                           ("start", "ln", False), ("status", "ln", "after"),
                           ("ready", "i", "ready")])
    res = run_amaranth(top(CFG), p, seed=SEED)
    st = LayerNorm.registers.status(res["seen"]["after"])
    assert st.errors.config and not st.running and not res["seen"]["ready"]


def _stats_vectors(rng, cfg):
    """(d, total, sumsq) with d * sumsq >= total**2, covering V = 0, perfect squares and
    their neighbours, and the largest variance."""
    w = ln_widths(cfg)
    out = []
    for d in (1, cfg.lanes, cfg.max_d):
        top = d * d * RMIN * RMIN
        for v in (0, 1, 2, 3, 4, 15, 16, 17, (1 << 20) - 1, 1 << 20, top - 1, top):
            total = rng.randint(-d * RMAX, d * RMAX)
            sumsq = -(-(v + total * total) // d)      # smallest sumsq with d*sumsq-T^2 >= v
            if sumsq < (1 << w["sumsq"]):
                out.append((d, total, sumsq))
        for _ in range(10):
            row = [rng.randint(RMIN, RMAX) for _ in range(d)]
            out.append((d, sum(row), sum(x * x for x in row)))
    return out


def test_row_statistics_match_isqrt_and_division():
    rng = random.Random(SEED + 2)
    vectors = _stats_vectors(rng, CFG)
    dut = RowStats(CFG)
    got, cycles = [], []

    async def bench(ctx):
        for d, total, sumsq in vectors:
            ctx.set(dut.d, d)
            await put_all(ctx, dut.i, [{"total": total, "sumsq": sumsq}])
            n = 1                                     # put_all returns after the taking edge
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                n += 1
                assert n < 1000, "RowStats hung (seed {})".format(SEED + 2)
            cycles.append(n)
            got.extend(await get_until(ctx, dut.o, lambda r: len(r) >= 1, timeout=10))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for (d, total, sumsq), g in zip(vectors, got):
        sigma = max(1, math.isqrt(d * sumsq - total * total))
        assert g == {"total": total, "recip": (1 << contract.LN_RECIP_BITS) // sigma}, \
            (d, total, sumsq, g)
    # The documented latency is the measured one (clock edges from the one that takes the
    # input to the one that raises o.valid).
    assert set(cycles) == {stats_cycles(CFG)}, (set(cycles), stats_cycles(CFG))
