"""Residual add stage under Amaranth's simulator, bit-exact with the integer model's
``saturate(x + y, RESID)``: saturation corners, independent stalls on ``i``, ``skip`` and
``o``, the ``frame`` error, and run framing (DONE after ``tokens`` tokens; the next run's beats
wait for its START)."""

import gc
import random

import pytest
import torch
from amaranth.sim import Simulator

from golden import contract, qtorch
from hw.config import preset
from hw.residual import REGISTERS, ResidualAdd
from sim.amaranth_streams import StreamStalls, csr_read, csr_write, get_until, put_all
from sim import scoreboard

SEED = 7200
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, name="ew")
RESID = contract.RESID
#: (skip, i) pairs at and past the saturation corners.
CORNERS = [(RESID.max, 1), (1, RESID.max), (RESID.min, -1), (-1, RESID.min),
           (RESID.max, RESID.max), (RESID.min, RESID.min), (RESID.max, RESID.min),
           (0, 0), (RESID.max, 0), (RESID.min, 0), (RESID.max - 1, 1), (RESID.min + 1, -1)]


def framed(values, lengths):
    """Beats of ``values`` (one list of ``lanes`` values per beat), cut into tokens of the
    given beat counts (cycled)."""
    beats, n, k = [], 0, 0
    while n < len(values):
        size = min(lengths[k % len(lengths)], len(values) - n)
        beats += [{"data": list(v), "last": int(j == size - 1)}
                  for j, v in enumerate(values[n:n + size])]
        n, k = n + size, k + 1
    return beats


def expected(skip, inp):
    """The golden output beats: ``qtorch.saturate(skip + i, RESID)`` lane-wise, ``i``'s
    ``last``."""
    s = torch.tensor([b["data"] for b in skip], dtype=torch.int64)
    x = torch.tensor([b["data"] for b in inp], dtype=torch.int64)
    y = qtorch.saturate(s + x, RESID).tolist()
    return [{"data": v, "last": b["last"]} for v, b in zip(y, inp)]


def random_pairs(rng, n):
    """``n`` beats of (skip, i) lane values: corners first, then near-corner and uniform
    values."""
    pool = [p for p in CORNERS]
    pairs = []
    for _ in range(n * CFG.lanes):
        if pool:
            pairs.append(pool.pop(0))
        elif rng.random() < 0.3:
            pairs.append(tuple(rng.choice([RESID.min, RESID.max]) - rng.randrange(-3, 4)
                               if rng.random() < 0.5 else rng.randrange(RESID.min, RESID.max + 1)
                               for _ in range(2)))
        else:
            pairs.append((rng.randrange(RESID.min, RESID.max + 1),
                          rng.randrange(RESID.min, RESID.max + 1)))
    pairs = [tuple(RESID.saturate(v) for v in p) for p in pairs]
    beats = [pairs[k * CFG.lanes:(k + 1) * CFG.lanes] for k in range(n)]
    return [[p[0] for p in b] for b in beats], [[p[1] for p in b] for b in beats]


def simulate(runs, streams, seed, *, stall=0.0, limit=50_000):
    """Run ``runs`` in order on one fresh stage; ``streams`` maps ``"i"`` and ``"skip"`` to
    their whole input streams, offered from the first cycle on, each with its own stalls.

    A run is a dict: ``tokens``, ``want`` (its output beat count), optionally
    ``clear_error``. Returns, per run, ``{"beats", "status", "tokens_out", "cycles",
    "fired_in", "fired_out"}`` (handshake counts when DONE was first read, the inputs counted
    again 8 cycles later; ``fired_in`` maps each input port to its count). A watchdog fails a
    run that hangs; every failure names the seed."""
    dut = ResidualAdd(CFG)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)

    def stalls():
        return StreamStalls(rng.randrange(1 << 30), stall) if stall else None
    in_stalls = {p: stalls() for p in ("i", "skip")}
    out_stalls = stalls()
    fired = {"i": 0, "skip": 0, "out": 0}
    state = {"got": 0}
    results = [dict() for _ in runs]

    async def host(ctx):
        regs = REGISTERS
        for k, run in enumerate(runs):
            if run.get("clear_error"):
                await csr_write(ctx, dut.csr, regs.addr("ctrl"), regs.ctrl("clear_error"))
            await csr_write(ctx, dut.csr, regs.addr("tokens"), run["tokens"])
            await csr_write(ctx, dut.csr, regs.addr("ctrl"), regs.ctrl("start"))
            while True:
                status = regs.status(await csr_read(ctx, dut.csr, regs.addr("status")))
                if status.done:
                    break
            res = results[k]
            res["status"], res["fired_out"] = status, fired["out"]
            for _ in range(8):
                await ctx.tick()
            res["fired_in"] = {p: fired[p] for p in ("i", "skip")}
            res["tokens_out"] = await csr_read(ctx, dut.csr, regs.addr("tokens_out"))
            res["cycles"] = await csr_read(ctx, dut.csr, regs.addr("cycles"))
            while state["got"] <= k:
                await ctx.tick()

    def source(port):
        async def send(ctx):
            await put_all(ctx, getattr(dut, port), streams[port], in_stalls[port])
        return send

    async def sink(ctx):
        for k, run in enumerate(runs):
            results[k]["beats"] = await get_until(
                ctx, dut.o, lambda r, n=run["want"]: len(r) >= n, out_stalls, timeout=limit)
            state["got"] = k + 1

    async def monitor(ctx):
        async for _, _, iv, ir, sv, sr, ov, ordy in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.skip.valid, dut.skip.ready,
                dut.o.valid, dut.o.ready):
            fired["i"] += iv and ir
            fired["skip"] += sv and sr
            fired["out"] += ov and ordy

    async def watchdog(ctx):
        await ctx.delay(limit * 1e-8)
        raise TimeoutError("not done after {} cycles: beats {}, runs {}"
                           .format(limit, fired, results))

    sim.add_testbench(host)
    sim.add_testbench(sink)
    for bench in (source("i"), source("skip"), monitor, watchdog):
        sim.add_testbench(bench, background=True)
    try:
        sim.run()
        failure = None
    except Exception as exc:
        failure = "seed {}: {!r}".format(seed, exc)
    # Close the benches still waiting (a stuck source, the monitor) now rather than at some
    # later garbage collection (Amaranth then raises from inside whatever runs, e.g. pytest's
    # traceback rendering).
    del sim
    gc.collect()
    if failure is not None:
        raise AssertionError(failure)
    return results


def check_run(res, want, seed, *, what, errors=()):
    return scoreboard.check_run(res, want, seed, REGISTERS, what=what, errors=errors)


def test_corners_are_what_the_tests_claim():
    """The corner pairs overflow both ways under a plain sum and the golden model clamps."""
    sums = [a + b for a, b in CORNERS]
    assert max(sums) > RESID.max and min(sums) < RESID.min
    got = qtorch.saturate(torch.tensor(sums), RESID).tolist()
    assert RESID.max in got and RESID.min in got and 0 in got


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_saturating_sums_with_independent_stalls(stall):
    """Two runs of random int16 sums, the saturation corners first, exact; ``i``, ``skip``
    and ``o`` each stall on their own seeded pattern."""
    seed = SEED + int(stall * 10)
    rng = random.Random(seed)
    skip_v, i_v = random_pairs(rng, 160)
    skip, inp = framed(skip_v, (3, 1, 4)), framed(i_v, (3, 1, 4))
    ends = [n + 1 for n, b in enumerate(inp) if b["last"]]
    half = ends[len(ends) // 2]
    runs = [{"tokens": len(ends) // 2 + 1, "want": half},
            {"tokens": len(ends) - len(ends) // 2 - 1, "want": len(inp) - half}]
    r = simulate(runs, {"i": inp, "skip": skip}, seed, stall=stall)
    want = expected(skip, inp)
    check_run(r[0], want[:half], seed, what="run 0 beat")
    check_run(r[1], want[half:], seed, what="run 1 beat")


def test_full_rate_without_stalls():
    """Without stalls a run of ``n`` beats joins one pair per cycle with one cycle of
    latency: the ``cycles`` counter (START to DONE) reads ``n + 2``."""
    seed = SEED + 1
    skip_v, i_v = random_pairs(random.Random(seed), 64)
    skip, inp = framed(skip_v, (8,)), framed(i_v, (8,))
    r = simulate([{"tokens": 8, "want": 64}], {"i": inp, "skip": skip}, seed)
    check_run(r[0], expected(skip, inp), seed, what="beat")
    assert r[0]["cycles"] == len(inp) + 2, "seed {}: {} beats took {} cycles".format(
        seed, len(inp), r[0]["cycles"])


def test_frame_error_then_clean_run_is_exact():
    """A clean run shows no error; a run whose ``skip`` tokens are framed differently (the
    same beat count) sets ``frame`` and still emits every sum with ``i``'s ``last``; after
    ``clear_error`` the next clean run is exact with no error."""
    seed = SEED + 2
    rng = random.Random(seed)
    parts = [random_pairs(rng, 12) for _ in range(3)]
    inp = [framed(i_v, (3,)) for _, i_v in parts]
    skip = [framed(parts[0][0], (3,)), framed(parts[1][0], (2, 4)), framed(parts[2][0], (3,))]
    assert [b["last"] for b in skip[1]] != [b["last"] for b in inp[1]]
    runs = [{"tokens": 4, "want": 12}, {"tokens": 4, "want": 12},
            {"tokens": 4, "want": 12, "clear_error": True}]
    r = simulate(runs, {"i": sum(inp, []), "skip": sum(skip, [])}, seed, stall=0.3)
    check_run(r[0], expected(skip[0], inp[0]), seed, what="clean run beat")
    check_run(r[1], expected(skip[1], inp[1]), seed, what="misframed run beat",
              errors=("frame",))
    check_run(r[2], expected(skip[2], inp[2]), seed, what="run after clear_error beat")


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_done_after_tokens_and_next_run_waits_for_start(stall):
    """``tokens = 0`` is an empty run: DONE, no beat taken. A run of 3 tokens joins exactly
    their beats (the fourth token, already offered on both inputs, waits), is DONE only once
    its last beat has left, and ``tokens_out`` is 3; the next run (2 tokens) takes the
    rest."""
    seed = SEED + 3 + int(stall * 10)
    skip_v, i_v = random_pairs(random.Random(seed), 9)
    skip, inp = framed(skip_v, (1, 3, 2, 1, 2)), framed(i_v, (1, 3, 2, 1, 2))
    ends = [n + 1 for n, b in enumerate(inp) if b["last"]]
    assert len(ends) == 5
    runs = [{"tokens": 0, "want": 0}, {"tokens": 3, "want": ends[2]},
            {"tokens": 2, "want": ends[4] - ends[2]}]
    r = simulate(runs, {"i": inp, "skip": skip}, seed, stall=stall)
    want = expected(skip, inp)
    check_run(r[0], [], seed, what="empty run beat")
    check_run(r[1], want[:ends[2]], seed, what="3-token run beat")
    check_run(r[2], want[ends[2]:], seed, what="2-token run beat")
    for k, taken in enumerate([0, ends[2], ends[4]]):
        assert r[k]["fired_in"] == {"i": taken, "skip": taken}, \
            "seed {}: run {} took {} input beats, want {}".format(
                seed, k, r[k]["fired_in"], taken)
        assert r[k]["fired_out"] == taken, "seed {}: run {} DONE after {} output beats, " \
            "want {}".format(seed, k, r[k]["fired_out"], taken)
