"""The token buffer between blocks under Amaranth's simulator: a fill, then drains of every
held token and of STA keep lists (to the next block and to the head), exact; a drain and a
refill in one run, in place, against a slow drain; bad keep lists
(duplicates, unsorted, out of range, the wrong count) and bad settings refused with an error,
the held tokens intact, and the next good drain exact."""

import random

import pytest

from hw.config import preset
from hw.pipeline import Pipeline
from hw.token_buffer import REGISTERS, TokenBuffer
from sim.driver import Plan, run_amaranth, run_amaranth_plans

SEED = 4099
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_tokens=12, max_heads=2,
                             name="buffer16")


def top():
    return Pipeline(CFG, [("buf", TokenBuffer(CFG))])


def tokens(rng, n, d):
    return [[rng.randint(-2 ** 15, 2 ** 15 - 1) for _ in range(d)] for _ in range(n)]


def beats_of(xs):
    V = CFG.lanes
    return [{"data": row[s:s + V], "last": s + V == len(row)}
            for row in xs for s in range(0, len(row), V)]


def fill(xs, *, inputs=None):
    return Plan("fill", setup=[("pulse", "buf", ("clear_error",)),
                               ("write", "buf", "d", len(xs[0])),
                               ("write", "buf", "fill_tokens", len(xs)),
                               ("write", "buf", "drain_tokens", 0), ("start", "buf", True)],
                inputs=[("i", beats_of(xs) if inputs is None else inputs)],
                counters={"buf": {"tokens_in": len(xs), "tokens_out": 0}}, done=["buf"])


def keep_steps(keep):
    return [("pulse", "buf", ("reset_load",)),
            ("load", "buf.keep_load", [{"index": k} for k in keep])]


def drain(xs, keep=None, *, dest=0, count=None, refill=None):
    """Drain the held ``xs``: every token (``keep`` None) or the listed ones; with ``refill``
    (tokens), fill the buffer with them in the same run."""
    want = xs if keep is None else [xs[k] for k in keep]
    n = len(want) if count is None else count
    setup = [("pulse", "buf", ("clear_error",))] + ([] if keep is None else keep_steps(keep))
    setup += [("write", "buf", "d", len(xs[0])),
              ("write", "buf", "fill_tokens", 0 if refill is None else len(refill)),
              ("write", "buf", "drain_tokens", n),
              ("write", "buf", "listed", int(keep is not None)),
              ("write", "buf", "dest", dest), ("start", "buf", True)]
    counters = {"tokens_out": n, "tokens_in": 0 if refill is None else len(refill)}
    return Plan("drain", setup=setup, outputs=[("o" if dest == 0 else "buf.head",
                                                beats_of(want))],
                inputs=[] if refill is None else [("i", beats_of(refill))],
                counters={"buf": counters}, done=["buf"])


def test_fill_then_drain_whole_and_by_keep_lists():
    """Held tokens survive drains: the whole set, a keep list to the head, a full and a
    one-token list; then a refill of the whole buffer (max_tokens) at full width, drained
    by a list that keeps its first and last token."""
    rng = random.Random(SEED)
    xs = tokens(rng, 7, 8)
    full = tokens(rng, CFG.max_tokens, CFG.max_d)
    full[0], full[-1] = [-2 ** 15] * CFG.max_d, [2 ** 15 - 1] * CFG.max_d
    plans = [fill(xs), drain(xs), drain(xs, [0, 2, 3, 6], dest=1), drain(xs, list(range(7))),
             drain(xs, [5]), fill(full), drain(full, [0, CFG.max_tokens - 1]), drain(full)]
    run_amaranth_plans(top(), plans, seed=SEED, stall=0.3)


def _refused(keep, count):
    """A listed drain of the held 5 tokens with ``keep`` and ``tokens`` = ``count``, expected
    to be refused: it records STATUS after the START and whether ``keep_load`` is ready."""
    setup = ([("pulse", "buf", ("clear_error",))] + keep_steps(keep)
             + [("write", "buf", "d", 8), ("write", "buf", "fill_tokens", 0),
                ("write", "buf", "drain_tokens", count), ("write", "buf", "listed", 1),
                ("write", "buf", "dest", 0), ("start", "buf", False),
                ("status", "buf", "after"), ("ready", "buf.keep_load", "ready")])
    return Plan("bad", setup=setup)


@pytest.mark.parametrize("keep,count,errors", [
    ([0, 1, 1, 3], 4, {"order"}),                   # a duplicate
    ([0, 3, 2, 4], 4, {"order"}),                   # unsorted
    ([0, 1, 5], 3, set()),                          # index 5 of 5 held: out of range
    ([0, 1, CFG.max_tokens], 3, {"order"}),         # past the buffer
    ([0, 1, 2], 2, set()),                          # the wrong count: more entries
    ([0, 1, 2], 4, set()),                          # the wrong count: fewer entries
], ids=["duplicate", "unsorted", "out-of-range", "past-max", "count-high", "count-low"])
def test_bad_keep_lists_are_refused_and_the_next_good_drain_is_exact(keep, count, errors):
    rng = random.Random(SEED + count)
    xs = tokens(rng, 5, 8)
    res = run_amaranth_plans(top(), [fill(xs), _refused(keep, count), drain(xs, [1, 4]),
                                     drain(xs)], seed=SEED,
                             stall=0.2, check=[True, False, True, True])
    st = REGISTERS.status(res[1]["seen"]["after"])
    assert st.errors.config and not st.running and not st.done, \
        REGISTERS.describe(res[1]["seen"]["after"])
    for e in ("order", "token"):
        assert bool(st.errors[e]) == (e in errors), REGISTERS.describe(res[1]["seen"]["after"])
    assert res[1]["seen"]["ready"]                  # idle: the next list can load


def test_a_short_token_is_flagged_and_a_refill_is_exact():
    rng = random.Random(SEED + 1)
    xs = tokens(rng, 3, 8)
    beats = beats_of(xs)
    bad_in = [dict(beats[0], last=True)] + beats[2:]    # token 0 one beat short
    res = run_amaranth_plans(top(), [fill(xs, inputs=bad_in), fill(xs), drain(xs, [0, 2])],
                             seed=SEED, stall=0.2, check=[False, True, True])
    st = REGISTERS.status(res[0]["status"]["buf"])
    assert st.errors.token and st.done, REGISTERS.describe(res[0]["status"]["buf"])


@pytest.mark.parametrize("fill_n,drain_n,d", [(1, 0, 0), (1, 0, 6), (1, 0, 20), (0, 0, 8),
                                               (CFG.max_tokens + 1, 0, 8), (0, 1, 8)],
                         ids=["d0", "d6", "d20", "nothing", "past-max", "nothing-held"])
def test_bad_settings_refuse_to_start(fill_n, drain_n, d):
    """Bad widths and counts; a drain with nothing held (after reset)."""
    p = Plan("bad", setup=[("write", "buf", "fill_tokens", fill_n),
                           ("write", "buf", "drain_tokens", drain_n), ("write", "buf", "d", d),
                           ("start", "buf", False), ("status", "buf", "after"),
                           ("ready", "i", "ready")])
    seen = run_amaranth(top(), p, seed=0, stall=0)["seen"]
    st = REGISTERS.status(seen["after"])
    assert st.errors.config and not st.running and not seen["ready"]


def test_a_drain_past_the_held_tokens_is_refused_and_the_next_is_exact():
    rng = random.Random(SEED + 2)
    xs = tokens(rng, 5, 8)
    bad = Plan("bad", setup=[("pulse", "buf", ("clear_error",)),
                             ("write", "buf", "fill_tokens", 0),
                             ("write", "buf", "drain_tokens", 6), ("write", "buf", "listed", 0),
                             ("start", "buf", False), ("status", "buf", "after")])
    res = run_amaranth_plans(top(), [fill(xs), bad, drain(xs)], seed=SEED, stall=0.2,
                             check=[True, False, True])
    st = REGISTERS.status(res[1]["seen"]["after"])
    assert st.errors.config and not st.running, REGISTERS.describe(res[1]["seen"]["after"])


@pytest.mark.parametrize("keep", [None, [0, 2, 3, 6], [0, 1, 2, 3, 4]],
                         ids=["whole", "listed", "listed-prefix"])
def test_a_run_drains_and_refills_in_place(keep):
    """One run drains the held tokens (whole or listed) while the new ones fill the same
    slots; with a slow drain (o stalls often and long) and inputs offered every cycle, an
    unchecked fill would overwrite slots before they are read. Then the refill drains back
    exact."""
    rng = random.Random(SEED + 3)
    xs = tokens(rng, 7, 8)
    ys = tokens(rng, 7 if keep is None else len(keep), 8)
    plans = [fill(xs), drain(xs, keep, refill=ys), drain(ys), drain(ys, [1, 3])]
    run_amaranth_plans(top(), plans, seed=SEED, stall=(0, 0.8), max_wait=6)
