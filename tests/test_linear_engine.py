"""Linear engine under Amaranth's simulator: delta projections bit-exact with the golden model."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from golden import contract
from golden.intvidt import QLinear
from hw.config import preset
from hw.linear_engine import Ctrl, LinearEngine, Reg, Status
from sim.amaranth_streams import StreamStalls, get_until, put_all
from sim.linear_job import job_from_layer
from sim.scoreboard import check_equal

SEED = 515

CONFIGS = {
    "tiny": preset("tiny"),
    "r2v4k2": preset("tiny").replace(rows=2, lanes=4, requant_lanes=4, bitmap_word=8,
                                     max_d=32, max_tokens=32, weight_depth=512,
                                     max_positions=8, name="r2v4k2"),
}


def random_layer(rng, d_out, d_in, out_fmt=contract.ACT):
    w = torch.tensor([[rng.randint(-127, 127) for _ in range(d_in)] for _ in range(d_out)])
    b = torch.tensor([rng.randint(-5000, 5000) for _ in range(d_out)])
    mult = torch.tensor([rng.randint(1 << 14, (1 << 16) - 1) for _ in range(d_out)])
    shift = torch.tensor([rng.randint(22, 27) for _ in range(d_out)])
    return QLinear(w, b, mult, shift, out_fmt)


def random_tokens(rng, n_t, n_s, d_in, change=0.3):
    """Frames of tokens that change a little from frame to frame (some elements zero)."""
    x = [[rng.choice([0, rng.randint(-128, 127)]) for _ in range(d_in)] for _ in range(n_s)]
    frames = [x]
    for _ in range(n_t - 1):
        frames.append([[max(-128, min(127, v + (rng.randint(-6, 6) if rng.random() < change
                                                else 0))) for v in tok] for tok in frames[-1]])
    x = torch.tensor([tok for f in frames for tok in f])
    i = torch.arange(n_t * n_s)
    return x, i // n_s, i % n_s


async def csr_write(ctx, dut, reg, value):
    ctx.set(dut.csr_addr, reg)
    ctx.set(dut.csr_w_data, int(value))
    ctx.set(dut.csr_w_en, 1)
    await ctx.tick()
    ctx.set(dut.csr_w_en, 0)


async def csr_read(ctx, dut, reg):
    ctx.set(dut.csr_addr, reg)
    await ctx.tick()
    await ctx.tick()
    return ctx.get(dut.csr_r_data)


def run_job(job, seed, stall=0.3, timeout=200_000):
    """Run ``job`` on a fresh engine; return (output beats, status, counters)."""
    dut = LinearEngine(job.config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {}

    async def bench(ctx):
        await csr_write(ctx, dut, Reg.CTRL, Ctrl.CLEAR_REFS | Ctrl.RESET_LOAD | Ctrl.CLEAR_ERROR)
        for reg, value in job.registers:
            await csr_write(ctx, dut, reg, value)
        await put_all(ctx, dut.w_load, job.weights)
        await put_all(ctx, dut.c_load, job.channels)
        await csr_write(ctx, dut, Reg.CTRL, Ctrl.START)

    async def source(ctx):
        await ctx.tick().repeat(8 + len(job.weights) + len(job.channels) + len(job.registers))
        await put_all(ctx, dut.i, job.tokens, StreamStalls(seed, stall) if stall else None)

    async def sink(ctx):
        got = await get_until(ctx, dut.o, lambda r: len(r) >= len(job.expected),
                              StreamStalls(seed + 1, stall) if stall else None, timeout)
        result["out"] = got
        for _ in range(20):
            status = await csr_read(ctx, dut, Reg.STATUS)
            if status & Status.DONE:
                break
        result["status"] = status
        for reg in (Reg.CYCLES, Reg.BUSY, Reg.MAC_LANES, Reg.PAIRS, Reg.TOKENS_OUT):
            result[reg.name] = await csr_read(ctx, dut, reg)

    sim.add_testbench(bench)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return result


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("tau,delta,stall", [(2, True, 0.3), (0, True, 0.0), (2, False, 0.0)])
def test_engine_matches_golden(name, tau, delta, stall):
    cfg = CONFIGS[name]
    seed = SEED + 7 * tau + 13 * delta + len(name)
    rng = random.Random(seed)
    d_in = 2 * cfg.bitmap_word
    d_out = cfg.lanes * (2 * cfg.rows + 1)                   # a partial last chunk if rows > 1
    layer = random_layer(rng, d_out, d_in, contract.RESID if tau == 0 else contract.ACT)
    x, frame, spatial = random_tokens(rng, n_t=3, n_s=3, d_in=d_in)
    job = job_from_layer(cfg, layer, x, frame, spatial, 3, tau=tau, delta_enable=delta)
    res = run_job(job, seed, stall)
    check_equal(res["out"], job.expected, what="linear engine output", seed=seed)
    assert res["status"] & Status.DONE and not res["status"] & Status.ERROR, \
        "status {:#x} (seed {})".format(res["status"], seed)
    assert res["MAC_LANES"] == job.mac_lanes and res["PAIRS"] == job.pairs
    assert res["TOKENS_OUT"] == job.n_tokens
    assert res["BUSY"] <= res["CYCLES"]


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_few_values_in_the_first_of_many_words(stall):
    """A delta token whose only sent values sit in its first word, followed by three words
    with none: the values wait in the encoder's packer until the token ends, while the bitmap
    decoder holds two words and takes no more until it has them (a deadlock before the
    encoder's bitmap FIFO)."""
    cfg = CONFIGS["r2v4k2"]
    seed = SEED + 101
    rng = random.Random(seed)
    d_in = 4 * cfg.bitmap_word
    layer = random_layer(rng, 2 * cfg.lanes * cfg.rows, d_in)
    x0 = torch.tensor([[rng.randint(-100, 100) for _ in range(d_in)] for _ in range(2)])
    x1 = x0.clone()
    x1[0, :3] += 40                   # three sent values (fewer than decode_width allows)
    x1[1, 1] -= 40                    # one sent value
    x = torch.cat([x0, x1, x1])       # and a token that sends nothing at all
    frame, spatial = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    job = job_from_layer(cfg, layer, x, frame, spatial, 2, tau=4)
    res = run_job(job, seed, stall, timeout=2_000)
    check_equal(res["out"], job.expected, what="linear engine output", seed=seed)
    assert res["PAIRS"] == job.pairs and res["TOKENS_OUT"] == job.n_tokens
