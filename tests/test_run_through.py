"""Run-through datapath under Amaranth's simulator: delta QKV projection feeding sparse attention
on one shared PE array, sequence after sequence, bit-exact with the golden model."""

import random

import pytest
from amaranth.sim import Simulator

from hw import attention_engine as att
from hw import linear_engine as lin
from hw.pe_arbiter import PEArbiter
from hw.run_through import ATTENTION_BASE, RunThrough
from sim.amaranth_streams import StreamStalls, csr_read, csr_write, get_until, put_all
from sim.run_through_job import run_through_job
from sim.scoreboard import check_equal
from tests.test_attention_engine import OUT, SMALL, SOFTMAX
from tests.test_linear_engine import random_layer, random_tokens

SEED = 7077


def run(job, seed, stall):
    dut = RunThrough(job.linear.config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    res = {}

    async def bench(ctx):
        for reg, value in job.attention.registers:
            await csr_write(ctx, dut, ATTENTION_BASE + reg, value)
        await csr_write(ctx, dut, ATTENTION_BASE + att.Reg.CTRL, att.Ctrl.START)
        await csr_write(ctx, dut, lin.Reg.CTRL, lin.Ctrl.CLEAR_REFS | lin.Ctrl.RESET_LOAD)
        for reg, value in job.linear.registers:
            await csr_write(ctx, dut, reg, value)
        await put_all(ctx, dut.w_load, job.linear.weights)
        await put_all(ctx, dut.c_load, job.linear.channels)
        await csr_write(ctx, dut, lin.Reg.CTRL, lin.Ctrl.START)
        res["go"] = True

    def feed(port, beats, s):
        async def source(ctx):
            while not res.get("go"):
                await ctx.tick()
            await put_all(ctx, port, beats, StreamStalls(s, stall) if stall else None)
        return source

    async def sink(ctx):
        res["out"] = await get_until(ctx, dut.o, lambda r: len(r) >= len(job.attention.expected),
                                     StreamStalls(seed + 3, stall) if stall else None, 200_000)
        for _ in range(20):
            status = await csr_read(ctx, dut, ATTENTION_BASE + att.Reg.STATUS)
            if status & att.Status.DONE:
                break
        res["att_status"] = status
        res["lin_status"] = await csr_read(ctx, dut, lin.Reg.STATUS)
        for reg in (att.Reg.CYCLES, att.Reg.MAC_LANES, att.Reg.BUSY):
            res["att_" + reg.name] = await csr_read(ctx, dut, ATTENTION_BASE + reg)
        for reg in (lin.Reg.MAC_LANES, lin.Reg.TOKENS_OUT, lin.Reg.BUSY):
            res["lin_" + reg.name] = await csr_read(ctx, dut, reg)

    sim.add_testbench(bench)
    sim.add_testbench(feed(dut.i, job.linear.tokens, seed + 1))
    sim.add_testbench(feed(dut.masks, job.attention.masks, seed + 2))
    sim.add_testbench(sink)
    sim.run()
    return res


@pytest.mark.parametrize("sequences,stall,rho", [(1, 0.3, 0.5), (3, 0.0, 0.5), (2, 0.2, 1.0)])
def test_run_through_matches_golden(sequences, stall, rho):
    seed = SEED + 11 * sequences + int(10 * stall)
    rng = random.Random(seed)
    cfg = SMALL
    d = cfg.max_d                                   # 2 heads x head_dim 8
    layer = random_layer(rng, 3 * d, d)
    n_s, n_t = 4, 3                                 # 12 tokens: 3 query blocks of 4
    xs = [random_tokens(rng, n_t, n_s, d)[0] for _ in range(sequences)]
    job = run_through_job(cfg, layer, xs, n_s, tau=2, rho=rho, heads=2, **SOFTMAX, **OUT)
    res = run(job, seed, stall)
    check_equal(res["out"], job.attention.expected, what="run-through output", seed=seed)
    assert res["att_status"] & att.Status.DONE and not res["att_status"] & att.Status.ERROR, \
        hex(res["att_status"])
    assert res["lin_status"] & lin.Status.DONE and not res["lin_status"] & lin.Status.ERROR, \
        hex(res["lin_status"])
    assert res["att_MAC_LANES"] == job.attention.mac_lanes
    assert res["lin_MAC_LANES"] == job.linear.mac_lanes
    assert res["lin_TOKENS_OUT"] == job.linear.n_tokens
    # One array: the two engines' beats never exceed the cycles.
    assert res["att_BUSY"] + res["lin_BUSY"] <= res["att_CYCLES"] + 64


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_arbiter_rejects_bad_port_count():
    with pytest.raises(ValueError, match="ports must be a positive integer"):
        PEArbiter(SMALL, ports=0)
