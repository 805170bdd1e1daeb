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
from hw.attention_engine import AttentionEngine, Ctrl, Reg, Status
from sim.attention_job import Sequence, attention_job, expected_beats
from sim.runner import config_from_env
from sim.scoreboard import check_equal
from sim.streams import (StreamSink, StreamSource, csr_read, csr_write, input_ports,
                         start_clock_and_reset)


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


async def run_attention_job(dut, cfg, job, seed, stall, *, base=0):
    """Program, start and check one job on the DUT's attention register port; returns the
    engine's counters."""
    layout = AttentionEngine(cfg).signature.members
    for reg, value in job.registers:
        await csr_write(dut, reg, value, base=base)
    await csr_write(dut, Reg.CTRL, Ctrl.START, base=base)
    status = await csr_read(dut, Reg.STATUS, base=base)
    assert status & Status.RUNNING, "{}: did not start, status {:#x}".format(job.name, status)
    src = StreamSource(dut, "qkv", layout["qkv"].signature.members["payload"].shape,
                       seed=seed, stall=stall)
    masks = StreamSource(dut, "masks", layout["masks"].signature.members["payload"].shape,
                         seed=seed + 1, stall=stall)
    sink = StreamSink(dut, "o", layout["o"].signature.members["payload"].shape,
                      seed=seed + 2, stall=stall)
    cocotb.start_soon(src.send(job.qkv))
    cocotb.start_soon(masks.send(job.masks))
    got = await sink.receive_until(lambda r: len(r) >= len(job.expected), timeout=20_000)
    check_equal(got, job.expected, what=job.name + " output", seed=seed)
    return await finish_counters(dut, job, base=base)


async def finish_counters(dut, job, *, base=0):
    for _ in range(20):
        status = await csr_read(dut, Reg.STATUS, base=base)
        if status & Status.DONE:
            break
    assert status & Status.DONE and not status & Status.ERROR, \
        "{}: status {:#x}".format(job.name, status)
    counters = {reg.name.lower(): await csr_read(dut, reg, base=base)
                for reg in (Reg.CYCLES, Reg.BUSY, Reg.MAC_LANES, Reg.SUBVECTORS,
                            Reg.BEATS_OUT)}
    assert counters["mac_lanes"] == job.mac_lanes, (job.name, counters, job.mac_lanes)
    assert counters["subvectors"] == job.subvectors, (job.name, counters, job.subvectors)
    assert counters["beats_out"] == len(job.expected)
    dut._log.info("%s: %s (ideal %.0f cycles)", job.name, counters, job.ideal_cycles)
    return counters


@cocotb.test()
async def attention_engine_matches_golden(dut):
    cfg = config_from_env()
    seed = int(os.environ.get("RTSA_SEED", "1"))
    stall = float(os.environ.get("RTSA_STALL", "0.3"))
    await start_clock_and_reset(dut, idle=input_ports(AttentionEngine(cfg)))
    results = []
    for n, (job, golden_out) in enumerate(jobs(cfg)):
        if golden_out is not None:
            # On a whole export the expectation must be the golden model's own trace.
            assert job.expected == expected_beats(cfg, golden_out), \
                "{}: recomputed attention differs from the exported trace".format(job.name)
        counters = await run_attention_job(dut, cfg, job, seed + 3 * n, stall)
        results.append(dict(job=job.name, ideal_cycles=job.ideal_cycles, **counters))
    assert results, "no job ran: RTSA_VECTORS/RTSA_MODES select nothing"
    if os.environ.get("RTSA_RESULTS"):
        with open(os.environ["RTSA_RESULTS"], "w") as f:
            json.dump(results, f, indent=1)
