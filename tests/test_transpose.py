"""Transposing buffer under Amaranth's simulator: attention output beats (head, block, dim) in,
token beats out, bit-exact against a transpose computed here from the attention tensor; random
stalls on both sides, framing errors and their recovery, and the configuration check."""

import gc
import random

import pytest
from amaranth.sim import Simulator

from hw.config import preset
from hw.transpose import REGISTERS, Transpose
from sim.amaranth_streams import StreamStalls, csr_read, csr_write, get_until, put_all
from sim.scoreboard import check_equal

SEED = 7310
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_heads=2, max_tokens=32,
                             name="tr")
#: head_dim 4 < lanes 8: a head's channels cover half a token beat.
NARROW = preset("tiny").replace(lanes=8, requant_lanes=1, max_d=16, max_heads=4,
                                max_tokens=16, name="tr_narrow")


def attention_tensor(rng, cfg, heads, n):
    """A random attention output ``O[head][token][dim]`` (int8)."""
    return [[[rng.randint(-128, 127) for _ in range(cfg.head_dim)] for _ in range(n)]
            for _ in range(heads)]


def input_beats(cfg, o):
    """The attention engine's beats of ``o``: per head, block and dim, lanes past N zero."""
    V, heads, n = cfg.lanes, len(o), len(o[0])
    beats = [{"data": [o[h][b * V + l][d] if b * V + l < n else 0 for l in range(V)],
              "head": h, "block": b, "dim": d, "last": 0}
             for h in range(heads) for b in range(-(-n // V)) for d in range(cfg.head_dim)]
    beats[-1]["last"] = 1
    return beats


def token_beats(cfg, o):
    """The projection's beats of ``o``: per token, channels ``head * head_dim + dim``."""
    V, heads, n = cfg.lanes, len(o), len(o[0])
    want = []
    for t in range(n):
        chans = [o[h][t][d] for h in range(heads) for d in range(cfg.head_dim)]
        nb = len(chans) // V
        want += [{"data": chans[b * V:(b + 1) * V], "last": int(b == nb - 1)}
                 for b in range(nb)]
    return want


def simulate(cfg, runs, seed, stall=0.0, limit=10_000):
    """Run ``runs`` one after the other on one unit; return per run its output beats, STATUS,
    ``tokens_out``, whether a surplus beat was offered and ``i.ready`` after the run, plus the
    cycles of every input and output handshake.

    A run is a dict: ``settings`` (register values), ``beats`` (input), ``want`` (output beats
    to wait for), optional ``clear`` (CLEAR_ERROR first). A watchdog fails the simulation
    after ``limit`` cycles; every failure names the seed."""
    dut = Transpose(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    in_stalls = StreamStalls(seed * 10 + 1, stall) if stall else None
    out_stalls = StreamStalls(seed * 10 + 2, stall) if stall else None
    state = {"run": -1, "drained": -1, "cycle": 0}
    results = [{} for _ in runs]
    fires = {"i": [], "o": [], "o_last": []}

    async def host(ctx):
        for r, run in enumerate(runs):
            if run.get("clear"):
                await csr_write(ctx, dut.csr, REGISTERS.addr("ctrl"),
                                REGISTERS.ctrl("clear_error"))
            for name, value in run["settings"].items():
                await csr_write(ctx, dut.csr, REGISTERS.addr(name), value)
            await csr_write(ctx, dut.csr, REGISTERS.addr("ctrl"), REGISTERS.ctrl("start"))
            state["run"] = r
            while state["drained"] < r:
                await ctx.tick()
            for _ in range(8):
                await ctx.tick()
            res = results[r]
            res["extra"] = bool(ctx.get(dut.o.valid))
            res["ready_after"] = bool(ctx.get(dut.i.ready))
            res["raw_status"] = await csr_read(ctx, dut.csr, REGISTERS.addr("status"))
            res["status"] = REGISTERS.status(res["raw_status"])
            res["tokens_out"] = await csr_read(ctx, dut.csr, REGISTERS.addr("tokens_out"))

    async def source(ctx):
        for r, run in enumerate(runs):
            while state["run"] < r:
                await ctx.tick()
            await put_all(ctx, dut.i, run["beats"], in_stalls)

    async def sink(ctx):
        for r, run in enumerate(runs):
            while state["run"] < r:
                await ctx.tick()
            results[r]["beats"] = await get_until(
                ctx, dut.o, lambda x, n=run["want"]: len(x) >= n, out_stalls, timeout=limit)
            state["drained"] = r

    async def monitor(ctx):
        async for _, _, iv, ir, ov, ordy, ol in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload.last):
            c = state["cycle"]
            if iv and ir:
                fires["i"].append(c)
            if ov and ordy:
                fires["o"].append(c)
                fires["o_last"].append(bool(ol))
            state["cycle"] = c + 1

    async def watchdog(ctx):
        await ctx.delay(limit * 1e-8)
        raise TimeoutError("not done after {} cycles (run {}): {} input beats taken, {} output "
                           "beats".format(limit, state["run"], len(fires["i"]), len(fires["o"])))

    for bench in (host, source, sink):
        sim.add_testbench(bench)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(watchdog, background=True)
    try:
        sim.run()
        failure = None
    except Exception as exc:
        failure = "seed {}: {!r}".format(seed, exc)
    if failure is not None:
        # Close the stuck testbenches now rather than at some later garbage collection
        # (Amaranth then raises from inside whatever runs, e.g. pytest's traceback rendering).
        del sim, host, source, sink, monitor, watchdog
        gc.collect()
        raise AssertionError(failure)
    return results, fires


def clean_run(cfg, rng, n, heads, seqs):
    """A run of ``seqs`` random sequences, and their expected token beats per sequence."""
    tensors = [attention_tensor(rng, cfg, heads, n) for _ in range(seqs)]
    want = [token_beats(cfg, o) for o in tensors]
    run = {"settings": {"tokens": n, "heads": heads, "sequences": seqs},
           "beats": [b for o in tensors for b in input_beats(cfg, o)],
           "want": sum(map(len, want))}
    return run, want


def check_sequences(res, want, seed, which=None):
    """The run's output, cut into sequences, equals ``want`` (only sequences ``which``)."""
    per = len(want[0])
    got = [res["beats"][s * per:(s + 1) * per] for s in range(len(want))]
    for s in (range(len(want)) if which is None else which):
        check_equal(got[s], want[s], what="sequence {} beat".format(s), seed=seed)


def check_finished(res, tokens, seed, errors=()):
    """DONE, exactly ``errors`` raised, ``tokens`` counted, nothing more offered or taken."""
    st = res["status"]
    desc = REGISTERS.describe(res["raw_status"])
    assert st.done and not st.running, "seed {}: status {}".format(seed, desc)
    raised = {e for e in REGISTERS.errors if st.errors[e]}
    assert raised == set(errors), "seed {}: status {}".format(seed, desc)
    assert res["tokens_out"] == tokens, "seed {}: tokens_out {}".format(seed, res["tokens_out"])
    assert not res["extra"], "seed {}: an output beat beyond the run".format(seed)
    assert not res["ready_after"], "seed {}: input taken after DONE".format(seed)


@pytest.mark.parametrize("cfg, n, heads, seqs, stall", [
    (CFG, 8, 2, 3, 0.3),          # N a multiple of lanes
    (CFG, 7, 2, 3, 0.3),          # a partial last block
    (CFG, 1, 2, 3, 0.3),          # N = 1
    (CFG, 32, 2, 2, 0.3),         # N = max_tokens, max heads
    (CFG, 32, 1, 2, 0.0),         # one head, no stalls
    (CFG, 13, 1, 4, 0.6),         # heavy stalls
    (NARROW, 9, 4, 3, 0.3),       # head_dim < lanes, heads straddle token beats
    (NARROW, 16, 2, 2, 0.3),
], ids=lambda v: v.name if hasattr(v, "name") else str(v))
def test_sequences_come_out_as_tokens(cfg, n, heads, seqs, stall):
    """Back-to-back sequences come out exactly as the transpose of their attention tensors,
    with seeded random valid / ready stalls on both sides; DONE after the last one."""
    seed = SEED + 1000 * heads + 10 * n + seqs + (cfg is NARROW)
    run, want = clean_run(cfg, random.Random(seed), n, heads, seqs)
    (res,), _ = simulate(cfg, [run], seed, stall)
    check_sequences(res, want, seed)
    check_finished(res, n * seqs, seed)


def test_full_rate_both_sides_at_once():
    """Without stalls, input and output each move one beat per cycle with no gap (N a multiple
    of lanes: both sides take as many cycles per sequence), the two overlap, and a sequence's
    first token beat leaves three cycles after its last input beat (module docstring)."""
    seed, n, heads, seqs = SEED + 1, 8, 2, 4
    run, want = clean_run(CFG, random.Random(seed), n, heads, seqs)
    (res,), fires = simulate(CFG, [run], seed)
    check_sequences(res, want, seed)
    check_finished(res, n * seqs, seed)
    ins, outs = fires["i"], fires["o"]
    assert ins == list(range(ins[0], ins[0] + len(ins))), "seed {}: input gaps".format(seed)
    per_in, per_out = len(ins) // seqs, len(outs) // seqs
    for s in range(seqs):
        seq_out = outs[s * per_out:(s + 1) * per_out]
        assert seq_out == list(range(seq_out[0], seq_out[0] + per_out)), \
            "seed {}: output gaps in sequence {}".format(seed, s)
        assert seq_out[0] - ins[(s + 1) * per_in - 1] == 3, \
            "seed {}: latency of sequence {}".format(seed, s)
    assert set(ins) & set(outs), "seed {}: input and output never overlap".format(seed)


def _malformed(rng, cfg, o, kind):
    """Input beats of ``o`` with one framing fault; whether its output is still exact."""
    beats = input_beats(cfg, o)
    k = rng.randrange(1, len(beats) - 2)     # beats k, k + 1 before the last
    if kind == "early_last":
        beats = beats[:k]
        beats[-1]["last"] = 1
        return beats, False
    if kind == "missing_last":
        beats[-1]["last"] = 0
        surplus = [dict(b, data=[rng.randint(-128, 127) for _ in b["data"]]) for b in beats[:3]]
        surplus[-1]["last"] = 1
        return beats + surplus, True
    if kind == "dims_swapped":          # two beats in the wrong order
        beats[k], beats[k + 1] = beats[k + 1], beats[k]
        return beats, False
    field = kind.split("_")[1]          # wrong_head, wrong_block, wrong_dim: the field alone
    beats[k][field] ^= 1
    return beats, True


@pytest.mark.parametrize("kinds", [("early_last",), ("missing_last",), ("dims_swapped",),
                                   ("wrong_head",), ("wrong_block",), ("wrong_dim",),
                                   ("early_last", "missing_last", "dims_swapped")],
                         ids=lambda k: "+".join(k))
def test_framing_fault_sets_frame_and_resynchronises(kinds):
    """A malformed sequence between clean ones sets ``frame`` without hanging: every sequence
    still leaves as N tokens, the clean ones exact (and the malformed one where only a field
    was wrong or ``last`` was missing). After CLEAR_ERROR and START a clean run is exact."""
    seed = SEED + 50 + sum(map(len, kinds))
    rng = random.Random(seed)
    n, heads = 6, 2
    tensors = [attention_tensor(rng, CFG, heads, n) for _ in range(len(kinds) + 2)]
    beats, exact = input_beats(CFG, tensors[0]), [0]
    for s, kind in enumerate(kinds, 1):
        bad, ok = _malformed(rng, CFG, tensors[s], kind)
        beats += bad
        exact += [s] if ok else []
    beats += input_beats(CFG, tensors[-1])
    exact.append(len(tensors) - 1)
    want = [token_beats(CFG, o) for o in tensors]
    bad_run = {"settings": {"tokens": n, "heads": heads, "sequences": len(tensors)},
               "beats": beats, "want": sum(map(len, want))}
    good_run, good_want = clean_run(CFG, rng, 5, 1, 2)
    good_run["clear"] = True
    (bad_res, good_res), _ = simulate(CFG, [bad_run, good_run], seed, 0.3)
    check_finished(bad_res, n * len(tensors), seed, errors=("frame",))
    check_sequences(bad_res, want, seed, which=exact)
    check_finished(good_res, 5 * 2, seed)
    check_sequences(good_res, good_want, seed)


@pytest.mark.parametrize("cfg, settings", [
    (CFG, {"tokens": 0}),
    (CFG, {"tokens": CFG.max_tokens + 1}),
    (CFG, {"tokens": (1 << 16) + 4}),           # would be valid if truncated
    (CFG, {"heads": 0}),
    (CFG, {"heads": CFG.max_heads + 1}),
    (CFG, {"heads": (1 << 8) + 1}),
    (CFG, {"sequences": 0}),
    (NARROW, {"heads": 1}),                     # 4 channels: not a multiple of 8 lanes
    (NARROW, {"heads": 3}),
], ids=lambda v: v.name if hasattr(v, "name") else "-".join(map(str, v.items())))
def test_bad_setting_gives_config_error(cfg, settings):
    """A START with an out-of-range setting sets ``config`` and does not run (no input taken);
    CLEAR_ERROR and a START with good settings then give an exact run."""
    seed = SEED + 99
    good = {"tokens": 5, "heads": 2, "sequences": 1}
    bad_run = {"settings": dict(good, **settings), "beats": [], "want": 0}
    good_run, want = clean_run(cfg, random.Random(seed), 5, 2, 1)
    good_run["clear"] = True
    (bad_res, good_res), _ = simulate(cfg, [bad_run, good_run], seed, 0.3)
    st = bad_res["status"]
    assert st.errors.config and not st.running and not st.done, \
        "seed {}: {}".format(seed, REGISTERS.describe(bad_res["raw_status"]))
    assert not bad_res["ready_after"], "seed {}: input ready after a refused START".format(seed)
    check_finished(good_res, 5, seed)
    check_sequences(good_res, want, seed)
