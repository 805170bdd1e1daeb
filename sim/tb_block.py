"""cocotb testbench: a whole VidT block (:class:`hw.block.Block`) on the trained benchmark
model's tensors, bit-exact against the integer golden model.

The block's input is the residual stream entering block ``RTSA_BLOCK`` of held-out test clips
(the embedding, and the blocks before it under the same sparse execution, computed by the
golden model); the expectation is :func:`sim.block_job.block_job`'s, which is checked against
:meth:`golden.intvidt.IntBlock.forward` for a single sequence.

Environment (set by ``tests/test_cosim_block.py`` or ``sim.bench_block``):

``RTSA_CLIPS``     comma-separated test-split clip indices, one sequence each
``RTSA_BLOCK``     block index (default 0)
``RTSA_DEPTH``     blocks run back to back from ``RTSA_BLOCK`` = 0 (default 1; more: every
                 block's constants in its own layer, :func:`sim.model_job.blocks_job`)
``RTSA_TOKENS``    tokens of each sequence (frame-major prefix; default: all)
``RTSA_TAU``       delta threshold of the four projections
``RTSA_RHO``       sub-vector keep ratio (1: dense attention)
``RTSA_DENSE``     1: the dense baseline (every projection dense, every element sent)
``RTSA_STALL``     probability of a random valid/ready stall on every stream
``RTSA_SEED``      stall seed
``RTSA_RESULTS``   optional JSON file: every stage's counters and the ideal cycles
"""

import json
import os

import cocotb

from golden import benchmark
from golden.intvidt import Tokens
from golden.sparse import SparseExecution
from golden.subvector import SubvectorAttention
from hw.block import Block
from sim.block_job import block_job
from sim.model_job import blocks_job
from sim.driver import settings_from_env
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


def block_inputs(clips, block, *, tau, rho, lanes):
    """The RESID tokens entering ``block`` of each test clip (``[N, d]`` each), the blocks
    before it run under the same sparse execution; and the model's ``(IntVidT, n_s)``."""
    q = benchmark.int_model()
    videos, _ = benchmark.clips(max(clips) + 1)
    xs = []
    for c in clips:
        run = SparseExecution(q.cfg.n_s, tau=tau,
                              attention=SubvectorAttention(lanes, rho) if rho < 1 else None)
        x = q.tokens(videos[c:c + 1], run)
        tokens = Tokens.full(1, q.cfg.n_t, q.cfg.n_s)
        for i in range(block):
            x, _ = q.blocks[i].forward(x, run, i, tokens)
        xs.append(x[0])
    return q, q.cfg.n_s, xs


def job_from_env(cfg):
    clips = [int(c) for c in os.environ["RTSA_CLIPS"].split(",")]
    block = int(os.environ.get("RTSA_BLOCK", "0"))
    tau = int(os.environ["RTSA_TAU"])
    rho = float(os.environ["RTSA_RHO"])
    dense = os.environ.get("RTSA_DENSE", "0") == "1"
    depth = int(os.environ.get("RTSA_DEPTH", "1"))
    q, n_s, xs = block_inputs(clips, block, tau=tau, rho=rho, lanes=cfg.lanes)
    tokens = int(os.environ.get("RTSA_TOKENS", "0")) or xs[0].shape[0]
    xs = [x[:tokens] for x in xs]
    name = "block{}/{}x{}/tau{}/rho{:g}{}".format(block, len(xs), tokens, tau, rho,
                                                  "/dense" if dense else "")
    if depth > 1:
        if block:
            raise ValueError("RTSA_DEPTH > 1 runs from block 0, not RTSA_BLOCK={}".format(block))
        return blocks_job(cfg, q, xs, n_s, tau=tau, rho=rho, depth=depth,
                          delta_enable=not dense, name="blocks0-{}/{}x{}".format(
                              depth - 1, len(xs), tokens))
    return block_job(cfg, q.blocks[block], xs, n_s, tau=tau, rho=rho, delta_enable=not dense,
                     name=name)


@cocotb.test()
async def block_matches_golden(dut):
    cfg = config_from_env()
    env = settings_from_env()
    top = Block(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    job = job_from_env(cfg)
    jobs = getattr(job, "blocks", [job])
    plans = job.plans() if hasattr(job, "plans") else [job.plan()]
    results = []
    for k, (blk_job, plan) in enumerate(zip(jobs, plans)):
        res = await run_cocotb_plan(dut, top, plan, seed=env["seed"] + 1000 * k,
                                    stall=env["stall"])
        dut._log.info("%s: %s cycles (ideal %.0f)", blk_job.name,
                      res["counters"]["res2"]["cycles"], blk_job.ideal_cycles)
        results.append(dict(job=blk_job.name, ideal_cycles=blk_job.ideal_cycles,
                            load_beats=blk_job.load_beats,
                            stage_ideal_cycles=blk_job.stage_ideal_cycles(),
                            predicted_cycles=blk_job.predicted_cycles,
                            counters=res["counters"]))
    if env["results"]:
        with open(env["results"], "w") as f:
            json.dump(results[0] if len(results) == 1 else dict(job=job.name, blocks=results),
                      f, indent=1)
