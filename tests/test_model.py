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
from sim.model_job import TINY_RTSA, model_job, tiny_model
from tests.test_attention_engine import SMALL

SEED = 7301
#: The small configuration of the array with two layers (the tiny model's two blocks).
CFG = TINY_RTSA
assert CFG == SMALL.replace(max_layers=2, name="small_model")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(SEED)


def test_a_clip_in_the_integer_models_logits_out(tiny):
    """Two blocks (delta tau = 2, sub-vector rho = 0.5) with STA r = 1 (the blocks run on 16
    and 10 tokens, the host keeps 9 for a head pass); random stalls. model_job checks its
    logits against IntVidT.forward; the plans check every stage's output and counters.
    (Without STA, the head in the last block's pass: tests/test_cosim_model.py.)"""
    r = 1
    q, videos = tiny
    job = model_job(CFG, q, videos[r], tau=2, rho=0.5, r=r)
    res = run_amaranth_plans(Model(CFG), job.plans(), seed=SEED + r, stall=0.2)
    got = [v for beat in res[-1]["outputs"]["o"] for v in beat["data"]]
    assert got == job.logits.tolist()


def test_a_bad_keep_list_is_refused_and_the_clip_still_runs_exact(tiny):
    """Between block 0's pass and block 1's, the host loads a keep list with a duplicate: the
    buffer flags ``order``, refuses the drain (``config``) and nothing runs; the real list
    then drains, and the clip's logits are still exact."""
    from hw.token_buffer import REGISTERS
    from sim.driver import Plan
    q, videos = tiny
    job = model_job(CFG, q, videos[1], tau=2, rho=0.5, r=1)
    plans = job.plans()
    keep = job.blocks.keeps[0]
    dup = [keep[0]] + keep[:-1]                 # the right count, the first index twice
    bad = Plan("bad keep list", setup=[
        ("pulse", "buffer", ("reset_load",)),
        ("load", "buffer.keep_load", [{"index": i} for i in dup]),
        ("write", "buffer", "fill_tokens", 0), ("write", "buffer", "drain_tokens", len(dup)),
        ("write", "buffer", "listed", 1), ("write", "buffer", "dest", 0),
        ("start", "buffer", False), ("status", "buffer", "after")])
    res = run_amaranth_plans(Model(CFG), plans[:1] + [bad] + plans[1:], seed=SEED, stall=0.2,
                             check=[True, False] + [True] * (len(plans) - 1))
    st = REGISTERS.status(res[1]["seen"]["after"])
    assert st.errors.order and st.errors.config and not st.running, \
        REGISTERS.describe(res[1]["seen"]["after"])
    got = [v for beat in res[-1]["outputs"]["o"] for v in beat["data"]]
    assert got == job.logits.tolist()


def test_a_clip_started_before_a_blocks_weights_are_loaded_is_refused_then_runs_exact(tiny):
    """The host loads every constant but block 0's QKV weights and starts pass 0 the way the
    driver does, the last stage first: route ... sta_keys start and wait, QKV refuses (``load``
    error), and the host starts nothing upstream of it (no token moves) and STOPs the stages it
    started (a running stage takes no constants). Then it loads everything and runs the clip:
    the logits are exact."""
    from hw.linear_engine import REGISTERS
    from sim.driver import Plan
    q, videos = tiny
    job = model_job(CFG, q, videos[0], tau=2, rho=0.5, r=0)
    plans = job.plans()
    first = plans[0]
    order = list(reversed(first.done))
    setup = [s for s in first.setup if s[0] != "start" and s[:2] != ("load", "qkv.w_load")]
    started = order[:order.index("qkv")]
    setup += [("start", s, True) for s in started]
    bad = Plan("unloaded qkv", setup=setup + [("start", "qkv", False), ("status", "qkv", "after")]
               + [("pulse", s, ("stop",)) for s in started]
               + [("status", s, "stopped " + s) for s in started])
    res = run_amaranth_plans(Model(CFG), [bad] + plans, seed=SEED, stall=0.2,
                             check=[False] + [True] * len(plans))
    st = REGISTERS.status(res[0]["seen"]["after"])
    assert st.errors.load and not st.running, REGISTERS.describe(res[0]["seen"]["after"])
    top = Model(CFG)
    for s in started:
        regs = top.windows[s][1]
        value = res[0]["seen"]["stopped " + s]
        assert not regs.status(value).running, (s, regs.describe(value))
    got = [v for beat in res[-1]["outputs"]["o"] for v in beat["data"]]
    assert got == job.logits.tolist()
