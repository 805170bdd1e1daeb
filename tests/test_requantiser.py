"""The pipelined requantiser against the contract's rule, at full width: boundaries random data
never hits (shift 0, rounding halves, saturation edges, the low/high split of the accumulator)
and seeded random cases, with the pipeline enable toggling."""

import random

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from golden import contract
from hw.config import preset
from hw.requantiser import LOW_BITS, Requantiser, latency

SEED = 77


def _cases(cfg, rng, n):
    fmt, mx = cfg.acc_format, contract.REQ_MULT.max
    accs = [0, 1, -1, fmt.max, fmt.min, (1 << LOW_BITS) - 1, 1 << LOW_BITS, -(1 << LOW_BITS),
            -(1 << LOW_BITS) - 1]
    out = []
    for a in accs:
        for mu in (0, 1, mx, 1 << 15):
            for s in (0, 1, 2, 15, contract.REQ_SHIFT.max):
                out.append((a, mu, s))
    # Rounding halves: acc * mult exactly (2k + 1) 2**(s-1), both signs.
    for s in range(1, 12):
        for k in (-3, -1, 0, 1, 2):
            out.append(((2 * k + 1) << (s - 1), 1, s))
    # Saturation edges: 127.5 and -128.5 after the shift, and one step inside.
    for v in (255, 256, 254, -257, -256, -258):
        out.append((v, 1, 1))
    for _ in range(n):
        out.append((rng.randint(fmt.min, fmt.max), rng.randint(0, mx),
                    rng.randint(0, contract.REQ_SHIFT.max)))
    return out


@pytest.mark.parametrize("steps", [3, 4])
def test_requantiser_equals_the_contract(steps):
    cfg = preset("tiny").replace(requant_lanes=2, requant_steps=steps, name="rq2")
    rng = random.Random(SEED)
    cases = _cases(cfg, rng, 2000)
    RQ = cfg.requant_lanes
    tag = data.StructLayout({"n": 16})
    dut = Requantiser(cfg, tag)
    got = {}

    async def bench(ctx):
        k = 0
        pending = 0
        while k < len(cases) or pending:
            en = rng.random() < 0.8
            ctx.set(dut.en, en)
            if k < len(cases):
                group = cases[k:k + RQ] + [cases[k]] * (RQ - len(cases[k:k + RQ]))
                # Lanes share mult and shift: lane 0's constants apply to every lane.
                mu, s = group[0][1], group[0][2]
                ctx.set(dut.i, {"valid": 1, "acc": [g[0] for g in group], "mult": mu,
                                "shift": s, "bypass": int(k % 7 == 3), "tag": {"n": k}})
            else:
                ctx.set(dut.i.valid, 0)
            await ctx.tick()
            if en and k < len(cases):
                k += RQ
            out = ctx.get(dut.o)
            if en and out.valid:
                got[out.tag.n] = list(out.data)
            pending = sum(1 for j in range(0, k, RQ) if j not in got)
            if not en and k >= len(cases):
                pending = pending  # drain needs enabled cycles
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    bad = []
    for k in range(0, len(cases), RQ):
        group = cases[k:k + RQ]
        mu, s = group[0][1], group[0][2]
        for q, (a, _, _) in enumerate(group):
            want = a if k % 7 == 3 else contract.requantize(a, mu, s, cfg.out_format)
            if got[k][q] != want:
                bad.append(((a, mu, s), got[k][q], want))
    assert not bad, "seed {}: first mismatches (acc, mult, shift), got, want: {}".format(
        SEED, bad[:5])
    assert latency(cfg) == steps
