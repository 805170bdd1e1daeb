"""Run-through datapath under Amaranth's simulator: delta QKV projection feeding sparse attention
on one shared PE array, sequence after sequence, bit-exact with the golden model; and the
pipeline of stages it is built from, with a third stage added."""

import random

import pytest

from hw.attention_engine import AttentionEngine, attention_output_layout
from hw.linear_engine import LinearEngine
from hw.pipeline import PassThrough, Pipeline
from hw.run_through import RunThrough
from sim.driver import Plan, run_amaranth
from sim.run_through_job import run_through_job
from sim.stimulus import random_layer, random_tokens
from tests.test_attention_engine import OUT, SMALL, SOFTMAX

SEED = 7077


def _job(seed, sequences, rho):
    rng = random.Random(seed)
    d = SMALL.max_d                                 # 2 heads x head_dim 8
    layer = random_layer(rng, 3 * d, d)
    n_s, n_t = 4, 3                                 # 12 tokens: 3 query blocks of 4
    xs = [random_tokens(rng, n_t, n_s, d)[0] for _ in range(sequences)]
    return run_through_job(SMALL, layer, xs, n_s, tau=2, rho=rho, heads=2, **SOFTMAX, **OUT)


def _one_array(res, stages):
    """The engines' beats share one array: together they never exceed the cycles."""
    busy = sum(res["counters"][s]["busy"] for s in stages)
    assert busy <= res["counters"]["attention"]["cycles"] + 64, res["counters"]


@pytest.mark.parametrize("sequences,stall,rho", [(1, 0.3, 0.5), (3, 0.0, 0.5), (2, 0.2, 1.0)])
def test_run_through_matches_golden(sequences, stall, rho):
    seed = SEED + 11 * sequences + int(10 * stall)
    job = _job(seed, sequences, rho)
    res = run_amaranth(RunThrough(SMALL), job.plan(timeout=200_000), seed=seed, stall=stall)
    _one_array(res, ("qkv", "attention"))


def test_a_third_stage_is_added_by_listing_it():
    """Projection, attention and a pass-through stage: the pipeline chains the third stage by
    its activation layout, gives it the next register window and runs it; outputs stay exact
    and the new stage counts every beat."""
    seed = SEED + 99
    job = _job(seed, 2, 0.5)
    top = Pipeline(SMALL, [("qkv", LinearEngine(SMALL)), ("attention", AttentionEngine(SMALL)),
                           ("probe", PassThrough(attention_output_layout(SMALL)))])
    assert [top.windows[n][0] for n in ("qkv", "attention", "probe")] == [0, 16, 32]
    plan = job.plan(timeout=200_000)
    beats = len(job.attention.expected)
    plan.setup = [("write", "probe", "beats", beats), ("start", "probe", True)] + plan.setup
    plan.counters["probe"] = {"beats_out": beats}
    plan.done.append("probe")
    res = run_amaranth(top, plan, seed=seed, stall=0.2)
    _one_array(res, ("qkv", "attention"))


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_pipeline_rejects_mismatched_stages():
    with pytest.raises(ValueError, match="stage 'qkv' input layout must be stage 'attention'"):
        Pipeline(SMALL, [("attention", AttentionEngine(SMALL)), ("qkv", LinearEngine(SMALL))])
    with pytest.raises(ValueError, match="stage names must be unique"):
        Pipeline(SMALL, [("a", LinearEngine(SMALL)), ("a", AttentionEngine(SMALL))])
    with pytest.raises(ValueError, match="stage names must be identifiers other than"):
        Pipeline(SMALL, [("csr", LinearEngine(SMALL))])
    with pytest.raises(ValueError, match="stages must be a non-empty list"):
        Pipeline(SMALL, [])


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_pipeline_host_view_names_every_register():
    top = RunThrough(SMALL)
    assert top.addr("qkv", "ctrl") == 0 and top.addr("attention", "ctrl") == 16
    with pytest.raises(ValueError, match="attention engine has no register 'd_in'"):
        top.addr("attention", "d_in")
    with pytest.raises(ValueError, match="No stage with registers named 'fc1'"):
        top.addr("fc1", "ctrl")
    plan = Plan(name="bad step", setup=[("poke", "qkv")])
    with pytest.raises(ValueError, match="Unknown plan step"):
        run_amaranth(top, plan, seed=0, stall=0)


def test_stop_ends_a_run_without_done_and_the_next_run_is_exact():
    """STOP on a running stage that took no input: running falls, DONE stays low, the beats
    offered meanwhile wait (``i.ready`` low); a START then runs the next beats exactly, and
    STOP on an idle stage changes nothing."""
    from amaranth.lib import data
    from sim.driver import run_amaranth_plans
    top = Pipeline(None, [("p", PassThrough(data.StructLayout({"data": 8, "last": 1})))])
    regs = top.windows["p"][1]
    beats = [{"data": v, "last": v == 3} for v in (1, 2, 3)]
    stop = Plan("stop", setup=[("write", "p", "beats", 3), ("start", "p", True),
                               ("pulse", "p", ("stop",)), ("status", "p", "stopped"),
                               ("ready", "i", "ready"), ("pulse", "p", ("stop",)),
                               ("status", "p", "idle")])
    good = Plan("after", setup=[("write", "p", "beats", 3), ("start", "p", True)],
                inputs=[("i", beats)], outputs=[("o", beats)],
                counters={"p": {"beats_out": 3}}, done=["p"])
    seen = run_amaranth_plans(top, [stop, good], seed=SEED, stall=0.3,
                              check=[False, True])[0]["seen"]
    for key in ("stopped", "idle"):
        st = regs.status(seen[key])
        assert not st.running and not st.done and not st.error, regs.describe(seen[key])
    assert not seen["ready"]
