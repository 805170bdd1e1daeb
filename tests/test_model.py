"""The whole model on one PE array under Amaranth's simulator: a clip in, the integer model's
logits out, bit for bit (embedding, positional add, every block with delta projections,
on-chip sub-vector predictor and STA pruning between blocks, final LayerNorm, mean pooling,
classifier). The run also covers what the block tests do not: two blocks' constants in
two layers (block 1's weights differ, so a run on the wrong layer fails), the STA reports
(checked on their ports), the tokens kept on chip between passes in the token buffer and
drained by the host's keep lists (a wrong list changes the next block's reports), the
ragged token set with listed positions, a head pass on the kept tokens, and a bad keep list
refused mid-clip."""

import pytest

from hw.model import Model
from sim.driver import run_amaranth_plans
from sim.model_job import TINY_RTSA, TINY_STREAMED, model_job, tiny_model
from tests.test_attention_engine import SMALL

SEED = 7301
#: The small configuration of the array with two layers (the tiny model's two blocks).
CFG = TINY_RTSA
assert CFG == SMALL.replace(max_layers=2, name="small_model")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(SEED)


def _unloaded_qkv_plan(first):
    """The host loads every constant of pass ``first`` but block 0's QKV weights and starts
    it the way the driver does, the last stage first: route ... sta_keys start and wait, QKV
    refuses (``load`` error), the host starts nothing upstream of it and STOPs the stages it
    started. Returns the plan and the stages it started."""
    from sim.driver import Plan
    order = list(reversed(first.done))
    setup = [s for s in first.setup if s[0] != "start" and s[:2] != ("load", "qkv.w_load")]
    started = order[:order.index("qkv")]
    setup += [("start", s, True) for s in started]
    plan = Plan("unloaded qkv", setup=setup + [("start", "qkv", False), ("status", "qkv", "after")]
                + [("pulse", s, ("stop",)) for s in started]
                + [("status", s, "stopped " + s) for s in started])
    return plan, started


def _bad_keep_plan(keep):
    """A keep list with a duplicate (the right count, the first index twice)."""
    from sim.driver import Plan
    dup = [keep[0]] + keep[:-1]
    return Plan("bad keep list", setup=[
        ("pulse", "buffer", ("reset_load",)),
        ("load", "buffer.keep_load", [{"index": i} for i in dup]),
        ("write", "buffer", "fill_tokens", 0), ("write", "buffer", "drain_tokens", len(dup)),
        ("write", "buffer", "listed", 1), ("write", "buffer", "dest", 0),
        ("start", "buffer", False), ("status", "buffer", "after")])


@pytest.fixture(scope="module")
def clip_with_two_bad_requests(tiny):
    """One simulation of the whole model (a simulation of it takes about three minutes under
    Amaranth's simulator, so the three tests below share it): a clip started before block 0's
    QKV weights are loaded, then the clip (two blocks, delta tau = 2, sub-vector rho = 0.5,
    STA r = 1: the blocks run on 16 and 10 tokens, the host keeps 9 for a head pass) with a
    bad keep list between block 0's pass and block 1's; random stalls. model_job checks its
    logits against IntVidT.forward; the plans check every stage's output and counters."""
    q, videos = tiny
    job = model_job(CFG, q, videos[1], tau=2, rho=0.5, r=1)
    plans = job.plans()
    unloaded, started = _unloaded_qkv_plan(plans[0])
    bad_keep = _bad_keep_plan(job.blocks.keeps[0])
    runs = [unloaded] + plans[:1] + [bad_keep] + plans[1:]
    res = run_amaranth_plans(Model(CFG), runs, seed=SEED + 1, stall=0.2,
                             check=[False, True, False] + [True] * (len(plans) - 1))
    return job, res, started


def test_a_clip_in_the_integer_models_logits_out(clip_with_two_bad_requests):
    """The clip's logits are the integer model's, bit for bit, after both refusals.
    (Without STA, the head in the last block's pass: tests/test_cosim_model.py.)"""
    job, res, _ = clip_with_two_bad_requests
    got = [v for beat in res[-1]["outputs"]["o"] for v in beat["data"]]
    assert got == job.logits.tolist()


def test_a_bad_keep_list_is_refused_and_the_clip_still_runs_exact(clip_with_two_bad_requests):
    """Between block 0's pass and block 1's, the host loads a keep list with a duplicate: the
    buffer flags ``order``, refuses the drain (``config``) and nothing runs; the real list
    then drains (the logits test above: still exact)."""
    from hw.token_buffer import REGISTERS
    _, res, _ = clip_with_two_bad_requests
    st = REGISTERS.status(res[2]["seen"]["after"])
    assert st.errors.order and st.errors.config and not st.running, \
        REGISTERS.describe(res[2]["seen"]["after"])


def test_a_clip_started_before_a_blocks_weights_are_loaded_is_refused_then_runs_exact(
        clip_with_two_bad_requests):
    """QKV refuses to start without its weights (``load`` error), and every stage the host
    started before it is stopped (a running stage takes no constants); then the host loads
    everything and the clip runs exactly (the logits test above)."""
    from hw.linear_engine import REGISTERS
    _, res, started = clip_with_two_bad_requests
    st = REGISTERS.status(res[0]["seen"]["after"])
    assert st.errors.load and not st.running, REGISTERS.describe(res[0]["seen"]["after"])
    top = Model(CFG)
    assert started
    for s in started:
        regs = top.windows[s][1]
        value = res[0]["seen"]["stopped " + s]
        assert not regs.status(value).running, (s, regs.describe(value))


@pytest.mark.parametrize("cfg", [CFG, TINY_STREAMED], ids=["resident", "streamed"])
def test_each_blocks_constants_reach_its_layer_before_its_pass(tiny, cfg):
    """Resident (two layers for two blocks): the first pass loads both blocks' constants into
    layers 0 and 1, later passes none. Streamed (one layer): every pass loads its own block's
    into layer 0 before it programs and starts the block; the constants sent are block 0's and
    then block 1's (different weights), and nothing runs on a layer other than 0. The
    co-simulation over the link (tests/test_cosim_link.py) runs the streamed clip bit-exactly."""
    q, videos = tiny
    job = model_job(cfg, q, videos[1], tau=2, rho=0.5, r=1)
    plans = job.plans()
    streamed = cfg.max_layers < len(q.blocks)
    assert job.blocks.streamed == streamed
    blocks = job.blocks.blocks
    weights = [[s for s in b.loads if s[:2] == ("load", "qkv.w_load")] for b in blocks]
    assert weights[0] != weights[1]
    for k, plan in enumerate(plans):
        loads = [s for s in plan.setup if s[:2] == ("load", "qkv.w_load")]
        layers = {s[3] for s in plan.setup if s[0] == "write" and s[2] == "layer"
                  and s[1] not in ("embed", "norm", "head")}
        if streamed:
            assert loads == (weights[k] if k < len(blocks) else []), k
            assert layers <= {0}
            if loads:
                # The loads come before the block's program starts any stage.
                first_start = next(j for j, s in enumerate(plan.setup) if s[0] == "start")
                assert plan.setup.index(loads[-1]) < first_start
        else:
            assert loads == (weights[0] + weights[1] if k == 0 else []), k
            assert layers <= ({0, 1} if k == 0 else {k})
