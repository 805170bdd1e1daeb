"""hw.register_slice under Amaranth's simulator: every beat out in order under random stalls on
both sides, a beat a cycle without stalls (one cycle of latency), and ready a register."""

import random

import pytest
from amaranth.sim import Simulator

from hw.register_slice import RegisterSlice
from sim.amaranth_streams import StreamStalls, add_watchdog, get_until, put_all

SEED = 9301


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.7])
def test_every_beat_in_order_under_stalls(stall):
    seed = SEED + int(stall * 10)
    rng = random.Random(seed)
    beats = [rng.randrange(256) for _ in range(300)]
    dut = RegisterSlice(8)
    got = []

    async def source(ctx):
        await put_all(ctx, dut.i, beats, StreamStalls(seed, stall) if stall else None)

    async def sink(ctx):
        got.extend(await get_until(ctx, dut.o, lambda r: len(r) == len(beats),
                                   StreamStalls(seed + 1, stall) if stall else None))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    add_watchdog(sim, 20_000, "the register slice")
    sim.run()
    assert got == beats, "seed {}".format(seed)


def test_a_beat_a_cycle_and_a_registered_ready():
    """Without stalls n beats leave in n + 1 cycles; with the output stalled the slice takes
    two beats, then its ready is low in the next cycle without any input changing."""
    dut = RegisterSlice(8)
    n = 20
    log = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for k in range(n + 1):
            ctx.set(dut.i.payload, k)
            ctx.set(dut.i.valid, k < n)
            _, _, ov, op, ir = await ctx.tick().sample(dut.o.valid, dut.o.payload, dut.i.ready)
            log.append((k, ov, op, ir))
        # Output stalled: two beats in, then ready low.
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        readies = []
        for k in range(4):
            ctx.set(dut.i.payload, 100 + k)
            *_, ir = await ctx.tick().sample(dut.i.ready)
            readies.append(ir)
        log.append(readies)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    outs = [op for k, ov, op, ir in log[:-1] if ov]
    assert outs == list(range(n)) and all(ir for *_, ir in log[:-1])
    # Cycle k's sample shows the beat taken in cycle k - 1: one cycle of latency.
    assert [k for k, ov, op, ir in log[:-1] if ov] == list(range(1, n + 1))
    assert log[-1] == [1, 1, 0, 0]
