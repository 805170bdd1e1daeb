"""cocotb testbench of the soak (:mod:`sim.soak`): seeded random jobs of one campaign, one after
the other on one simulation, until a number of output elements is checked.

Environment (set by :func:`sim.soak.run_campaign`):

``RTSA_SOAK_CAMPAIGN``  the campaign (:data:`sim.soak.CAMPAIGNS`)
``RTSA_SOAK_FIRST``     the first job's seed (job ``k``: ``+ k``)
``RTSA_SOAK_OUTPUTS``   run jobs until this many output elements are checked
``RTSA_SOAK_JOBS``      at most this many jobs (0: no limit)
``RTSA_SOAK_CORRUPT``   optional: a job seed whose expectation is corrupted (the check fails)
``RTSA_RESULTS``        JSON lines appended per job (seed, shape, stalls, outputs, result)

A mismatching job is recorded and the soak goes on (the engine finished it); a job that raises
(a timeout, a refused start) is recorded and ends the simulation. The test fails when any job
mismatched.
"""

import json
import os
import time

import cocotb
import torch
from cocotb.triggers import SimTimeoutError, with_timeout

from hw.designs import design_class
from sim.runner import config_from_env
from sim.soak import CAMPAIGNS, check_job, corrupt, soak_job
from sim.streams import PERIOD_NS, input_ports, run_cocotb_plan, start_clock_and_reset


@cocotb.test()
async def soak(dut):
    # The golden model's small tensors: one thread (torch's intra-op threads beside the
    # simulator, on a loaded 2-core machine, made a one-job run take 19 s instead of 7 s).
    torch.set_num_threads(1)
    cfg = config_from_env()
    name = os.environ["RTSA_SOAK_CAMPAIGN"]
    first = int(os.environ["RTSA_SOAK_FIRST"])
    budget = int(os.environ["RTSA_SOAK_OUTPUTS"])
    max_jobs = int(os.environ.get("RTSA_SOAK_JOBS", "0"))
    bad_seed = os.environ.get("RTSA_SOAK_CORRUPT") or None
    top = design_class(CAMPAIGNS[name].design)(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    outputs = mismatches = k = 0
    with open(os.environ["RTSA_RESULTS"], "a") as log:
        while outputs < budget and not (max_jobs and k >= max_jobs):
            seed = first + k
            job = soak_job(cfg, name, seed)
            if bad_seed is not None and seed == int(bad_seed):
                corrupt(job)
            record = dict(campaign=name, seed=seed, shape=job.shape, stall=job.stall,
                          max_wait=job.max_wait, outputs=job.outputs, beats=job.beats,
                          predicted_cycles=round(job.predicted_cycles))
            t0 = time.time()
            try:
                result = await with_timeout(
                    run_cocotb_plan(dut, top, job.plan, seed=seed, stall=job.stall,
                                    check=False, max_wait=job.max_wait),
                    job.bound_cycles() * PERIOD_NS, "ns")
            except (SimTimeoutError, TimeoutError, AssertionError) as e:
                record.update(error="{}: {}".format(type(e).__name__, e), outputs=0)
                log.write(json.dumps(record) + "\n")
                log.flush()
                raise AssertionError("{} seed {}: {}".format(name, seed, record["error"]))
            mismatch = check_job(job, top, result)
            stage = next(iter(job.plan.counters))
            record.update(mismatch=mismatch, cycles=result["counters"][stage]["cycles"],
                          wall_s=round(time.time() - t0, 3))
            log.write(json.dumps(record) + "\n")
            log.flush()
            dut._log.info("%s seed %d: %d outputs, %s", name, seed, job.outputs,
                          "MISMATCH {}".format(mismatch) if mismatch else "ok")
            outputs += job.outputs
            mismatches += mismatch is not None
            k += 1
    assert mismatches == 0, "{}: {} of {} jobs mismatched".format(name, mismatches, k)
