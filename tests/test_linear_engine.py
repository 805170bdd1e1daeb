"""Linear engine under Amaranth's simulator: delta projections bit-exact with the golden model."""

import random
from dataclasses import replace

import pytest
import torch
from amaranth.sim import Simulator

from golden import contract
from golden.intvidt import QLinear
from hw.config import preset
from hw.linear_engine import Ctrl, LinearEngine, Reg, Status
from sim.amaranth_streams import StreamStalls, csr_read, csr_write, get_until, put_all
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


# ---- malformed configuration and input: error flags, never a hang -------------------------

def _small_job(seed, *, d_in_words=2, n_t=2, n_s=2, tau=2, layer=None):
    cfg = CONFIGS["r2v4k2"]
    rng = random.Random(seed)
    d_in = d_in_words * cfg.bitmap_word
    layer = layer or random_layer(rng, cfg.lanes * cfg.rows, d_in)
    x, frame, spatial = random_tokens(rng, n_t=n_t, n_s=n_s, d_in=d_in, change=0.5)
    return job_from_layer(cfg, layer, x, frame, spatial, n_s, tau=tau)


def _token_slices(job):
    """(first, last) beat index of each token of ``job.tokens``."""
    spans, first = [], 0
    for n, beat in enumerate(job.tokens):
        if beat["last"]:
            spans.append((first, n))
            first = n + 1
    return spans


def _start_with(cfg, writes):
    """Write ``writes``, pulse START; the status after it (and after CLEAR_ERROR), and
    whether the input stream was ready while refused."""
    dut = LinearEngine(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def bench(ctx):
        for r, v in writes:
            await csr_write(ctx, dut, r, v)
        await csr_write(ctx, dut, Reg.CTRL, Ctrl.START)
        seen["after_start"] = await csr_read(ctx, dut, Reg.STATUS)
        seen["i_ready"] = ctx.get(dut.i.ready)
        await csr_write(ctx, dut, Reg.CTRL, Ctrl.CLEAR_ERROR)
        seen["after_clear"] = await csr_read(ctx, dut, Reg.STATUS)

    sim.add_testbench(bench)
    sim.run_until(1e-5)
    return seen


@pytest.mark.parametrize("reg,value", [
    (Reg.D_IN, 0), (Reg.D_IN, 12), (Reg.D_IN, 1 << 20), (Reg.D_OUT, 0), (Reg.D_OUT, 6),
    (Reg.D_OUT, 1 << 20)])
def test_bad_shape_raises_config_error_and_does_not_start(reg, value):
    seen = _start_with(CONFIGS["r2v4k2"],
                       [(Reg.D_IN, 16), (Reg.D_OUT, 8), (Reg.TOKENS, 1), (reg, value)])
    status = seen["after_start"]
    assert status & Status.ERR_CONFIG and status & Status.ERROR, hex(status)
    assert not status & (Status.RUNNING | Status.DONE), hex(status)
    assert not seen["i_ready"], "a refused run must not take tokens"
    assert seen["after_clear"] == 0, hex(seen["after_clear"])


def test_weights_too_large_for_the_buffer_raise_config_error():
    cfg = CONFIGS["r2v4k2"]
    # chunks * d_in weight words per row must fit weight_depth / rows.
    d_out = cfg.max_reduction // cfg.lanes * cfg.lanes
    chunks = -(-d_out // (cfg.rows * cfg.lanes))
    assert chunks * cfg.max_reduction > cfg.weight_depth // cfg.rows
    seen = _start_with(cfg, [(Reg.D_IN, cfg.max_reduction), (Reg.D_OUT, d_out),
                             (Reg.TOKENS, 1)])
    status = seen["after_start"]
    assert status & Status.ERR_CONFIG and not status & Status.RUNNING, hex(status)


@pytest.mark.parametrize("kind", ["short", "long"])
def test_wrong_token_length_raises_token_error_and_resynchronises(kind):
    """A token one beat short (``last`` early) or one beat long (no ``last`` on beat
    ``d_in / bitmap_word``): ERR_TOKEN, the run still finishes with one output token per input
    token, and the tokens at other positions stay bit-exact."""
    seed = SEED + (201 if kind == "short" else 202)
    job = _small_job(seed)
    spans = _token_slices(job)
    beats = [dict(b) for b in job.tokens]
    bad = 2                                    # frame 1, position 0
    first, last = spans[bad]
    if kind == "short":
        del beats[last]
        beats[last - 1]["last"] = 1
    else:
        extra = dict(beats[last])
        beats[last]["last"] = 0
        beats.insert(last + 1, extra)
    per_tok = len(job.expected) // job.n_tokens
    good = [t for t in range(job.n_tokens) if t != bad]
    bad_job = replace(job, tokens=beats)
    res = run_job(bad_job, seed, 0.3, timeout=5_000)
    assert len(res["out"]) == len(job.expected)
    for t in good:
        check_equal(res["out"][t * per_tok:(t + 1) * per_tok],
                    job.expected[t * per_tok:(t + 1) * per_tok],
                    what="token {} after a {} token".format(t, kind), seed=seed)
    assert res["status"] & Status.ERR_TOKEN and res["status"] & Status.DONE, hex(res["status"])
    assert res["TOKENS_OUT"] == job.n_tokens


def test_accumulator_overflow_raises_overflow_error():
    """y = bias + acc beyond the accumulator format: ERR_OVERFLOW, and the run finishes."""
    cfg = CONFIGS["r2v4k2"]
    seed = SEED + 301
    d_in, d_out = 2 * cfg.bitmap_word, cfg.lanes * cfg.rows
    top = (1 << (cfg.acc_format.bits - 1)) - 1
    layer = QLinear(torch.full((d_out, d_in), 127), torch.full((d_out,), top),
                    torch.full((d_out,), 1 << 14), torch.full((d_out,), 24), contract.ACT)
    job = job_from_layer(cfg, layer, torch.full((1, d_in), 100), torch.tensor([0]),
                         torch.tensor([0]), 1, tau=2)
    res = run_job(job, seed, 0.0, timeout=5_000)
    assert len(res["out"]) == len(job.expected), "the token's rows still leave"
    assert res["status"] & Status.ERR_OVERFLOW and res["status"] & Status.DONE, \
        hex(res["status"])
