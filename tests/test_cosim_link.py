"""The host library over the simulated UART: a clip of the seeded tiny model goes through
pyserial, a pseudo-terminal and the UART pins of the generated Verilog of the whole model
behind its link (Verilator), with the same plans every other backend runs (model_job: every
constant loaded over the link, every pass programmed and started over it; the array holds one
block's constants, so each block's are streamed before its pass), STA r = 1 with
the selection made in the host from the reports the chip sent (boards.host.run_clip); the
logits equal ``IntVidT.forward``'s, bit for bit, and every counter the plans expect is read
back over the link."""

import pytest

from boards.host import run_clip
from sim.link_sim import simulated_link
from sim.model_job import TINY_STREAMED, model_job, tiny_model
from tests.test_model import SEED


@pytest.mark.cosim
def test_a_clip_through_pyserial_and_the_simulated_uart():
    q, videos = tiny_model(SEED)
    job = model_job(TINY_STREAMED, q, videos[1], tau=2, rho=0.5, r=1)
    assert job.blocks.streamed
    with simulated_link(TINY_STREAMED, optimised=True) as link:
        logits, _ = run_clip(link, job, clock_hz=1e5, deadline=300.0)
    assert logits == job.logits.tolist()
    # What the demo's --traffic counts without a run is what crossed the link, stream by
    # stream (the register commands around the streams come on top).
    from boards.demo import _by_kind, planned
    from hw.model import Model
    plan = planned(Model(TINY_STREAMED), job, 3_000_000)
    assert plan["payload"] == _by_kind(link.beat_bytes)
    assert link.bytes_out > plan["bytes_out"] > sum(plan["payload"].values()) - \
        plan["payload"]["results"]


@pytest.mark.cosim
def test_the_ulx3s_design_runs_a_run_through_job_over_pyserial():
    """What the ULX3S bitstream holds (hw.link.LinkedRunThrough: the QKV projection and
    sparse attention on one PE array), driven by the same plan as every other backend over
    pyserial and the simulated UART: weights, constants, tokens and masks in, attention
    outputs and counters out, all checked bit-exactly."""
    from boards.link import run_plans
    from tests.test_run_through import SEED as RT_SEED, _job
    from tests.test_attention_engine import SMALL
    job = _job(RT_SEED + 5, 1, 0.5)
    with simulated_link(SMALL, design="run_through_link", optimised=True) as link:
        run_plans(link, [job.plan(timeout=200_000)], clock_hz=1e5, deadline=300.0)
