"""cocotb testbench: the run-through datapath (QKV projection -> sparse attention on one PE array)
on exported benchmark-model tensors, bit-exact.

Environment (set by ``tests/test_cosim_run_through.py`` or ``sim.bench_attention``):

``RTSA_VECTORS``   comma-separated export directories: one sequence each (their ``qkv`` inputs),
                   with the QKV layer and attention constants of the first
``RTSA_TOKENS``    tokens of each sequence (default: all)
``RTSA_TAU``       delta threshold of the projection (default: the export's)
``RTSA_RHO``       sub-vector keep ratio (default: the export's; 1: dense attention)
``RTSA_STALL``     probability of a random valid/ready stall on every stream
``RTSA_SEED``      stall seed
``RTSA_RESULTS``   optional JSON file: both engines' counters
"""

import json
import os
from pathlib import Path

import cocotb
import torch

from golden import contract
from golden.export import load
from golden.intvidt import QLinear
from hw.run_through import RunThrough
from sim.attention_job import expected_beats
from sim.driver import settings_from_env
from sim.run_through_job import run_through_job
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


def job_from_env(cfg):
    dirs = os.environ["RTSA_VECTORS"].split(",")
    manifest = json.loads(Path(dirs[0], "manifest.json").read_text())
    qkv = load(dirs[0], "qkv")
    attention = load(dirs[0], "attention")
    tokens = int(os.environ.get("RTSA_TOKENS", "0")) or qkv["x"].shape[0]
    tau = int(os.environ.get("RTSA_TAU", manifest["tau"]))
    rho = float(os.environ.get("RTSA_RHO", manifest["rho"]))
    t = {k: torch.as_tensor(qkv[k], dtype=torch.int64) for k in ("weight", "bias", "mult", "shift")}
    layer = QLinear(t["weight"], t["bias"], t["mult"], t["shift"], contract.ACT)
    xs = [torch.as_tensor(load(d, "qkv")["x"][:tokens], dtype=torch.int64) for d in dirs]
    job = run_through_job(cfg, layer, xs, manifest["n_s"], tau=tau, rho=rho,
                          heads=manifest["heads"], softmax_mult=attention["softmax_mult"],
                          softmax_shift=attention["softmax_shift"],
                          attn_mult=attention["attn_mult"], attn_shift=attention["attn_shift"],
                          name="{}x{}/tau{}/rho{:g}".format(len(dirs), tokens, tau, rho))
    whole = (len(dirs) == 1 and tokens == qkv["x"].shape[0] and tau == manifest["tau"]
             and rho == manifest["rho"])
    if whole:
        # The job's expectation must be the golden model's own trace of this block.
        out = torch.as_tensor(attention["out"], dtype=torch.int64)
        assert job.attention.expected == expected_beats(cfg, out), \
            "run-through expectation differs from the exported golden trace"
    return job


@cocotb.test()
async def run_through_matches_golden(dut):
    cfg = config_from_env()
    env = settings_from_env()
    top = RunThrough(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    job = job_from_env(cfg)
    res = await run_cocotb_plan(dut, top, job.plan(), seed=env["seed"], stall=env["stall"])
    counters, linear = res["counters"]["attention"], res["counters"]["qkv"]
    dut._log.info("%s: attention %s, linear %s, ideal %.0f cycles", job.name, counters, linear,
                  job.ideal_cycles)
    if env["results"]:
        with open(env["results"], "w") as f:
            json.dump(dict(job=job.name, ideal_cycles=job.ideal_cycles,
                           predicted_cycles=job.predicted_cycles,
                           linear_ideal_cycles=job.linear.ideal_cycles,
                           attention_ideal_cycles=job.attention.ideal_cycles,
                           attention=counters, linear=linear), f, indent=1)
