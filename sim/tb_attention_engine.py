"""cocotb testbench: the attention engine on exported benchmark-model tensors, bit-exact.

Environment (set by ``tests/test_cosim_attention.py`` or ``sim.bench_attention``):

``RTSA_VECTORS``   comma-separated export directories (:func:`golden.export.export`)
``RTSA_TOKENS``    tokens of each sequence (default: all; a prefix of the frame-major tokens,
                   the golden result then recomputed on that prefix)
``RTSA_MODES``     ``sparse`` (the exported sub-vector masks) and/or ``dense`` (every
                   sub-vector kept, the same RTL)
``RTSA_HEADS``     heads of each run: ``all`` (default) or a head index (one-head runs)
``RTSA_STALL``     probability of a random valid/ready stall on every stream
``RTSA_SEED``      stall seed
``RTSA_RESULTS``   optional JSON file: per job, the engine's counters
"""

import json
import os

import cocotb
import torch

from golden.export import load
from hw.run_through import AttentionTop
from sim.attention_job import Sequence, attention_job, expected_beats
from sim.driver import settings_from_env
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


def attention_sequence(arrays, tokens=0, heads="all", sparse=True):
    """A :class:`Sequence` from exported attention arrays (optionally a token prefix or one
    head), and whether it is the exported (whole) computation."""
    t = {k: torch.as_tensor(arrays[k], dtype=torch.int64) for k in ("q", "k", "v", "out")}
    keep = torch.as_tensor(arrays["keep"], dtype=torch.bool)
    n = tokens or t["q"].shape[1]
    sel = slice(None) if heads == "all" else slice(int(heads), int(heads) + 1)
    seq = Sequence(t["q"][sel, :n], t["k"][sel, :n], t["v"][sel, :n],
                   keep[sel, :n, :n] if sparse else None)
    whole = n == t["q"].shape[1] and (sparse or bool(keep.all()))
    return seq, (t["out"][sel] if whole else None)


def jobs(cfg):
    tokens = int(os.environ.get("RTSA_TOKENS", "0"))
    heads = os.environ.get("RTSA_HEADS", "all")
    for directory in os.environ["RTSA_VECTORS"].split(","):
        arrays = load(directory, "attention")
        for mode in os.environ.get("RTSA_MODES", "sparse").split(","):
            seq, golden_out = attention_sequence(arrays, tokens, heads, mode == "sparse")
            job = attention_job(cfg, [seq], softmax_mult=arrays["softmax_mult"],
                                softmax_shift=arrays["softmax_shift"],
                                attn_mult=arrays["attn_mult"], attn_shift=arrays["attn_shift"],
                                name="{}/{}/{}".format(os.path.basename(directory), mode, heads))
            yield job, golden_out


@cocotb.test()
async def attention_engine_matches_golden(dut):
    cfg = config_from_env()
    env = settings_from_env()
    top = AttentionTop(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    results = []
    for n, (job, golden_out) in enumerate(jobs(cfg)):
        if golden_out is not None:
            # On a whole export the expectation must be the golden model's own trace.
            assert job.expected == expected_beats(cfg, golden_out), \
                "{}: recomputed attention differs from the exported trace".format(job.name)
        res = await run_cocotb_plan(dut, top, job.plan("attention"), seed=env["seed"] + 3 * n,
                                    stall=env["stall"])
        counters = res["counters"]["attention"]
        dut._log.info("%s: %s (ideal %.0f cycles)", job.name, counters, job.ideal_cycles)
        results.append(dict(job=job.name, ideal_cycles=job.ideal_cycles,
                            predicted_cycles=job.predicted_cycles, **counters))
    assert results, "no job ran: RTSA_VECTORS/RTSA_MODES select nothing"
    if env["results"]:
        with open(env["results"], "w") as f:
            json.dump(results, f, indent=1)
