"""GELU stage under Amaranth's simulator, bit-exact with :func:`golden.qtorch.gelu`: every int8
input in every lane for several tables, table reloads, the ``range`` error, and run framing
(DONE after ``tokens`` tokens; the next run's beats wait for its START)."""

import gc
import random

import pytest
import torch
from amaranth.sim import Simulator

from golden import contract, qtorch
from hw.config import preset
from hw.gelu import GELU, REGISTERS, TABLE_DEPTH
from sim.amaranth_streams import StreamStalls, csr_read, csr_write, get_until, put_all
from sim import scoreboard

SEED = 7100
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, name="ew")
ACT = contract.ACT
TABLES = {"a": contract.gelu_table(0.05, 0.02), "b": contract.gelu_table(0.1, 0.05),
          # saturates at both ends: large positive inputs and GELU's negative dip
          "sat": contract.gelu_table(0.5, 0.001)}


def tokens_of(values, lengths):
    """Beats of ``values`` (one list of ``lanes`` values per beat), cut into tokens of the
    given beat counts (cycled)."""
    beats, n, k = [], 0, 0
    while n < len(values):
        size = min(lengths[k % len(lengths)], len(values) - n)
        beats += [{"data": list(v), "last": int(j == size - 1)}
                  for j, v in enumerate(values[n:n + size])]
        n, k = n + size, k + 1
    return beats


def expected(beats, table):
    """The golden output beats: :func:`golden.qtorch.gelu` of the lanes saturated into ACT
    (what the stage looks up for an out-of-range lane), ``last`` unchanged."""
    x = qtorch.saturate(torch.tensor([b["data"] for b in beats], dtype=torch.int64), ACT)
    y = qtorch.gelu(x, table).tolist()
    return [{"data": v, "last": b["last"]} for v, b in zip(y, beats)]


def simulate(runs, beats, seed, *, stall=0.0, limit=50_000, config=CFG):
    """Run ``runs`` in order on one fresh stage; ``beats`` is the whole input stream, offered
    from the first cycle on (the stage must take each run's beats only after its START).

    A run is a dict: ``tokens``, ``want`` (its output beat count), optionally ``layer`` (written
    first), ``table``
    (entries loaded before its START, after a ``reset_load`` pulse if ``reset_load``),
    ``clear_error`` and ``poke_load`` (offer a ``t_load`` beat for the first 4 cycles of the
    run; ``"poked_load_taken"`` says how many were taken). Returns, per run, ``{"beats",
    "status", "tokens_out", "cycles", "fired_in", "fired_out"}`` (the handshake counts when
    DONE was first read, input counted again 8 cycles later). A watchdog fails a run that
    hangs; every failure names the seed."""
    dut = GELU(config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)

    def stalls():
        return StreamStalls(rng.randrange(1 << 30), stall) if stall else None
    in_stalls, out_stalls, load_stalls = stalls(), stalls(), stalls()
    fired = {"in": 0, "out": 0, "load": 0}
    state = {"got": 0}
    results = [dict() for _ in runs]

    async def host(ctx):
        regs = REGISTERS
        for k, run in enumerate(runs):
            if "layer" in run:
                await csr_write(ctx, dut.csr, regs.addr("layer"), run["layer"])
            if run.get("clear_error"):
                await csr_write(ctx, dut.csr, regs.addr("ctrl"), regs.ctrl("clear_error"))
            if "table" in run:
                if run.get("reset_load"):
                    await csr_write(ctx, dut.csr, regs.addr("ctrl"), regs.ctrl("reset_load"))
                await put_all(ctx, dut.t_load, [{"data": v} for v in run["table"]],
                              load_stalls)
            await csr_write(ctx, dut.csr, regs.addr("tokens"), run["tokens"])
            await csr_write(ctx, dut.csr, regs.addr("ctrl"), regs.ctrl("start"))
            if run.get("poke_load"):
                loaded = fired["load"]
                ctx.set(dut.t_load.payload, {"data": ACT.max})
                ctx.set(dut.t_load.valid, 1)
                for _ in range(4):
                    await ctx.tick()
                ctx.set(dut.t_load.valid, 0)
                results[k]["poked_load_taken"] = fired["load"] - loaded
            while True:
                status = regs.status(await csr_read(ctx, dut.csr, regs.addr("status")))
                if status.done:
                    break
            res = results[k]
            res["status"], res["fired_out"] = status, fired["out"]
            for _ in range(8):
                await ctx.tick()
            res["fired_in"] = fired["in"]
            res["tokens_out"] = await csr_read(ctx, dut.csr, regs.addr("tokens_out"))
            res["cycles"] = await csr_read(ctx, dut.csr, regs.addr("cycles"))
            while state["got"] <= k:
                await ctx.tick()

    async def source(ctx):
        await put_all(ctx, dut.i, beats, in_stalls)

    async def sink(ctx):
        for k, run in enumerate(runs):
            results[k]["beats"] = await get_until(
                ctx, dut.o, lambda r, n=run["want"]: len(r) >= n, out_stalls, timeout=limit)
            state["got"] = k + 1

    async def monitor(ctx):
        async for _, _, iv, ir, ov, ordy, lv, lr in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready,
                dut.t_load.valid, dut.t_load.ready):
            fired["load"] += lv and lr
            fired["in"] += iv and ir
            fired["out"] += ov and ordy

    async def watchdog(ctx):
        await ctx.delay(limit * 1e-8)
        raise TimeoutError("not done after {} cycles: {} beats in, {} out, runs {}"
                           .format(limit, fired["in"], fired["out"], results))

    sim.add_testbench(host)
    sim.add_testbench(sink)
    for bench in (source, monitor, watchdog):
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


def every_input(rng, beats_per_token=(4,)):
    """Every ACT value once in every lane, each lane in its own random order."""
    lanes = [rng.sample(range(ACT.min, ACT.max + 1), TABLE_DEPTH) for _ in range(CFG.lanes)]
    return tokens_of(list(zip(*lanes)), beats_per_token)


def test_tables_cover_what_the_tests_claim():
    """The saturating table reaches both ends of ACT; the tables differ from each other."""
    assert TABLE_DEPTH == len(TABLES["a"])
    assert ACT.min in TABLES["sat"] and ACT.max in TABLES["sat"]
    assert len(set(TABLES.values())) == len(TABLES)


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_every_input_of_every_table_with_reloads(stall):
    """Three runs, each exhaustive over the 256 int8 inputs in every lane, each with its own
    table: the first loaded after reset, the others after ``reset_load`` (the last followed by
    surplus entries, which are dropped). Random stalls on input, output and table load."""
    seed = SEED + int(stall * 10)
    rng = random.Random(seed)
    names = ["a", "b", "sat"]
    per_run = [every_input(rng, (4, 1, 3)) for _ in names]
    runs = []
    for k, name in enumerate(names):
        table = list(TABLES[name]) + ([rng.randrange(ACT.min, ACT.max + 1) for _ in range(7)]
                                      if k == len(names) - 1 else [])
        runs.append({"table": table, "reset_load": k > 0, "want": len(per_run[k]),
                     "tokens": sum(b["last"] for b in per_run[k])})
    results = simulate(runs, sum(per_run, []), seed, stall=stall)
    for name, beats, res in zip(names, per_run, results):
        check_run(res, expected(beats, TABLES[name]), seed, what="table {} beat".format(name))


def test_layers_hold_their_own_tables():
    """``max_layers`` 3: tables ``a`` and ``b`` loaded into layers 0 and 2, then runs on
    layers 2, 0, 2 without reloading, each exhaustive: every run looks up its own layer's
    table (a loaded layer survives loads into another)."""
    seed = SEED + 31
    rng = random.Random(seed)
    cfg = CFG.replace(max_layers=3, name="ew_l3")
    order = [(0, "a", True), (2, "b", True), (2, "b", False), (0, "a", False), (2, "b", False)]
    per_run = [every_input(rng, (4,)) for _ in order]
    runs = [{"layer": layer, **({"table": TABLES[name], "reset_load": True} if load else {}),
             "want": len(beats), "tokens": sum(b["last"] for b in beats)}
            for (layer, name, load), beats in zip(order, per_run)]
    results = simulate(runs, sum(per_run, []), seed, stall=0.2, config=cfg)
    for (layer, name, _), beats, res in zip(order, per_run, results):
        check_run(res, expected(beats, TABLES[name]), seed,
                  what="layer {} table {} beat".format(layer, name))


def test_full_rate_without_stalls():
    """Without stalls a run of ``n`` beats takes one beat per cycle with one cycle of latency:
    the ``cycles`` counter (START to DONE) reads ``n + 2`` (n beats in, the last one's output
    cycle, the DONE cycle)."""
    seed = SEED + 1
    beats = every_input(random.Random(seed), (8,))
    runs = [{"table": TABLES["a"], "tokens": sum(b["last"] for b in beats), "want": len(beats)}]
    r = simulate(runs, beats, seed)
    check_run(r[0], expected(beats, TABLES["a"]), seed, what="beat")
    assert r[0]["cycles"] == len(beats) + 2, "seed {}: {} beats took {} cycles".format(
        seed, len(beats), r[0]["cycles"])


def test_out_of_range_sets_error_then_clean_run_is_exact():
    """A clean run shows no error; a run with lanes outside int8 (int16 corners, ACT +- 1,
    random) sets ``range`` and gives the table entries of the saturated values; after
    ``clear_error`` the next clean run is exact with no error."""
    seed = SEED + 2
    rng = random.Random(seed)
    r16 = contract.RESID
    corners = [r16.min, r16.max, ACT.min - 1, ACT.max + 1, ACT.min, ACT.max, 0, -1]
    clean1 = tokens_of([[rng.randrange(ACT.min, ACT.max + 1) for _ in range(CFG.lanes)]
                        for _ in range(12)], (3,))
    bad = tokens_of([[rng.choice(corners) if rng.random() < 0.5
                      else rng.randrange(r16.min, r16.max + 1) for _ in range(CFG.lanes)]
                     for _ in range(24)], (2, 3))
    clean2 = every_input(rng, (2,))
    runs = [{"table": TABLES["b"], "tokens": sum(b["last"] for b in clean1), "want": len(clean1)},
            {"tokens": sum(b["last"] for b in bad), "want": len(bad)},
            {"tokens": sum(b["last"] for b in clean2), "want": len(clean2), "clear_error": True}]
    r = simulate(runs, clean1 + bad + clean2, seed, stall=0.3)
    check_run(r[0], expected(clean1, TABLES["b"]), seed, what="clean run beat")
    check_run(r[1], expected(bad, TABLES["b"]), seed, what="out-of-range run beat",
              errors=("range",))
    check_run(r[2], expected(clean2, TABLES["b"]), seed, what="run after clear_error beat")


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_done_after_tokens_and_next_run_waits_for_start(stall):
    """``tokens = 0`` is an empty run: DONE, no beat taken. A run of 3 tokens takes exactly
    their beats (the fourth token, already offered, waits), is DONE only once its last beat
    has left, and ``tokens_out`` is 3; ``t_load`` offered during it is refused. The next run
    (2 tokens) takes the rest."""
    seed = SEED + 3 + int(stall * 10)
    rng = random.Random(seed)
    beats = tokens_of([[rng.randrange(ACT.min, ACT.max + 1) for _ in range(CFG.lanes)]
                       for _ in range(9)], (1, 3, 2, 1, 2))
    ends = [n + 1 for n, b in enumerate(beats) if b["last"]]
    assert len(ends) == 5
    runs = [{"table": TABLES["a"], "tokens": 0, "want": 0},
            {"tokens": 3, "want": ends[2], "poke_load": True},
            {"tokens": 2, "want": ends[4] - ends[2]}]
    r = simulate(runs, beats, seed, stall=stall)
    want = expected(beats, TABLES["a"])
    check_run(r[0], [], seed, what="empty run beat")
    check_run(r[1], want[:ends[2]], seed, what="3-token run beat")
    check_run(r[2], want[ends[2]:], seed, what="2-token run beat")
    assert r[1]["poked_load_taken"] == 0, "seed {}: t_load taken while running".format(seed)
    for k, taken in enumerate([0, ends[2], ends[4]]):
        assert r[k]["fired_in"] == taken, "seed {}: run {} took {} input beats, want {}".format(
            seed, k, r[k]["fired_in"], taken)
        assert r[k]["fired_out"] == taken, "seed {}: run {} DONE after {} output beats, " \
            "want {}".format(seed, k, r[k]["fired_out"], taken)
