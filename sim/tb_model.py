"""cocotb testbench: the whole model (:class:`hw.model.Model`) on a seeded tiny model
(:func:`sim.model_job.tiny_model`), a clip in, the integer model's logits out, bit for bit.

Environment (set by ``tests/test_cosim_model.py``):

``RTSA_MODEL_SEED``  seed of the tiny model
``RTSA_CLIP``        which of its two clips
``RTSA_TAU``, ``RTSA_RHO``, ``RTSA_R``  delta threshold, sub-vector keep ratio, STA tokens per
                     group
``RTSA_STALL``, ``RTSA_SEED``  random stalls
"""

import os

import cocotb

from hw.model import Model
from sim.driver import settings_from_env
from sim.model_job import model_job, tiny_model
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


@cocotb.test()
async def model_matches_golden(dut):
    cfg = config_from_env()
    env = settings_from_env()
    top = Model(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    q, videos = tiny_model(int(os.environ["RTSA_MODEL_SEED"]))
    job = model_job(cfg, q, videos[int(os.environ["RTSA_CLIP"])],
                    tau=int(os.environ["RTSA_TAU"]), rho=float(os.environ["RTSA_RHO"]),
                    r=int(os.environ["RTSA_R"]))
    for k, plan in enumerate(job.plans()):
        res = await run_cocotb_plan(dut, top, plan, seed=env["seed"] + 1000 * k,
                                    stall=env["stall"])
        dut._log.info("%s: done", plan.name)
    logits = [v for beat in res["outputs"]["o"] for v in beat["data"]]
    dut._log.info("logits %s (golden %s)", logits, job.logits.tolist())
    assert logits == job.logits.tolist()
