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
from hw import attention_engine as att
from hw import linear_engine as lin
from hw.run_through import ATTENTION_BASE, RunThrough
from sim.attention_job import expected_beats
from sim.run_through_job import run_through_job
from sim.runner import config_from_env
from sim.scoreboard import check_equal
from sim.streams import (StreamSink, StreamSource, csr_read, csr_write, input_ports,
                         start_clock_and_reset)
from sim.tb_attention_engine import finish_counters


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
    seed = int(os.environ.get("RTSA_SEED", "1"))
    stall = float(os.environ.get("RTSA_STALL", "0.3"))
    await start_clock_and_reset(dut, idle=input_ports(RunThrough(cfg)))
    job = job_from_env(cfg)
    ports = RunThrough(cfg).signature.members

    def layout(name):
        return ports[name].signature.members["payload"].shape

    await csr_write(dut, lin.Reg.CTRL, lin.Ctrl.CLEAR_REFS | lin.Ctrl.RESET_LOAD)
    for reg, value in job.linear.registers:
        await csr_write(dut, reg, value)
    for name, beats in (("w_load", job.linear.weights), ("c_load", job.linear.channels)):
        await StreamSource(dut, name, layout(name), seed=seed, stall=0).send(beats)
    # Attention starts last, right before the projection: its CYCLES counter then spans the
    # whole run-through.
    for reg, value in job.attention.registers:
        await csr_write(dut, reg, value, base=ATTENTION_BASE)
    await csr_write(dut, att.Reg.CTRL, att.Ctrl.START, base=ATTENTION_BASE)
    await csr_write(dut, lin.Reg.CTRL, lin.Ctrl.START)
    status = await csr_read(dut, lin.Reg.STATUS)
    assert status & lin.Status.RUNNING, "linear engine did not start: {:#x}".format(status)

    tokens = StreamSource(dut, "i", layout("i"), seed=seed + 1, stall=stall)
    masks = StreamSource(dut, "masks", layout("masks"), seed=seed + 2, stall=stall)
    sink = StreamSink(dut, "o", layout("o"), seed=seed + 3, stall=stall)
    cocotb.start_soon(tokens.send(job.linear.tokens))
    cocotb.start_soon(masks.send(job.attention.masks))
    # Attention on a sequence starts once its last token is projected: allow for that wait.
    got = await sink.receive_until(lambda r: len(r) >= len(job.attention.expected),
                                   timeout=int(3 * job.linear.ideal_cycles) + 50_000)
    check_equal(got, job.attention.expected, what=job.name + " output", seed=seed)
    counters = await finish_counters(dut, job.attention, base=ATTENTION_BASE)
    status = await csr_read(dut, lin.Reg.STATUS)
    assert status & lin.Status.DONE and not status & lin.Status.ERROR, hex(status)
    linear = {reg.name.lower(): await csr_read(dut, reg)
              for reg in (lin.Reg.CYCLES, lin.Reg.BUSY, lin.Reg.MAC_LANES, lin.Reg.TOKENS_OUT)}
    assert linear["mac_lanes"] == job.linear.mac_lanes, (linear, job.linear.mac_lanes)
    assert linear["tokens_out"] == job.linear.n_tokens
    dut._log.info("%s: attention %s, linear %s, ideal %.0f cycles", job.name, counters, linear,
                  job.ideal_cycles)
    if os.environ.get("RTSA_RESULTS"):
        with open(os.environ["RTSA_RESULTS"], "w") as f:
            json.dump(dict(job=job.name, ideal_cycles=job.ideal_cycles,
                           linear_ideal_cycles=job.linear.ideal_cycles,
                           attention_ideal_cycles=job.attention.ideal_cycles,
                           attention=counters, linear=linear), f, indent=1)
