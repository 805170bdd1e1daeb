"""cocotb testbench: the linear engine on exported benchmark-model tensors, bit-exact.

Environment (set by ``tests/test_cosim_linear.py`` or ``sim.bench_linear``):

``RTSA_VECTORS``   comma-separated export directories (:func:`golden.export.export`)
``RTSA_LAYERS``    comma-separated layers (default ``qkv,proj,fc1,fc2``)
``RTSA_TOKENS``    tokens of each layer to run (default: all; frame-major, so frame 0 first)
``RTSA_MODES``     ``delta`` and/or ``dense`` (the dense baseline: delta skipping disabled)
``RTSA_STALL``     probability of a random valid/ready stall on every stream
``RTSA_SEED``      stall seed
``RTSA_RESULTS``   optional JSON file: per job, the engine's counters
"""

import json
import os

import cocotb

from golden.export import load
from hw.linear_engine import Ctrl, LinearEngine, Reg, Status
from sim.linear_job import job_from_vectors
from sim.runner import config_from_env
from sim.scoreboard import check_equal
from sim.streams import (StreamSink, StreamSource, csr_read, csr_write, input_ports,
                         start_clock_and_reset)


def _jobs(cfg):
    layers = os.environ.get("RTSA_LAYERS", "qkv,proj,fc1,fc2").split(",")
    tokens = int(os.environ.get("RTSA_TOKENS", "0"))
    modes = os.environ.get("RTSA_MODES", "delta").split(",")
    for directory in os.environ["RTSA_VECTORS"].split(","):
        with open(os.path.join(directory, "manifest.json")) as f:
            manifest = json.load(f)
        for layer in layers:
            arrays = load(directory, layer)
            if tokens:
                arrays = {k: (a[:tokens] if k in ("x", "frame", "spatial") else a)
                          for k, a in arrays.items()}
            for mode in modes:
                yield job_from_vectors(
                    cfg, arrays, manifest["n_s"], tau=manifest["tau"],
                    out_bits=manifest["layers"][layer]["formats"]["out"]["bits"],
                    delta_enable=mode == "delta",
                    name="{}/{}/{}".format(os.path.basename(directory), layer, mode))


@cocotb.test()
async def linear_engine_matches_golden(dut):
    cfg = config_from_env()
    seed = int(os.environ.get("RTSA_SEED", "1"))
    stall = float(os.environ.get("RTSA_STALL", "0.3"))
    await start_clock_and_reset(dut, idle=input_ports(LinearEngine(cfg)))
    layout = LinearEngine(cfg).signature.members
    results = []
    for n, job in enumerate(_jobs(cfg)):
        await csr_write(dut, Reg.CTRL, Ctrl.CLEAR_REFS | Ctrl.RESET_LOAD | Ctrl.CLEAR_ERROR)
        for reg, value in job.registers:
            await csr_write(dut, reg, value)
        # Parameters load at full speed; the token and output streams stall at random.
        await StreamSource(dut, "w_load", layout["w_load"].signature.members["payload"].shape,
                           seed=seed, stall=0).send(job.weights)
        await StreamSource(dut, "c_load", layout["c_load"].signature.members["payload"].shape,
                           seed=seed, stall=0).send(job.channels)
        await csr_write(dut, Reg.CTRL, Ctrl.START)
        status = await csr_read(dut, Reg.STATUS)
        assert status & Status.RUNNING, "{}: engine did not start, status {:#x}".format(
            job.name, status)
        src = StreamSource(dut, "i", layout["i"].signature.members["payload"].shape,
                           seed=seed + 2 * n, stall=stall)
        sink = StreamSink(dut, "o", layout["o"].signature.members["payload"].shape,
                          seed=seed + 2 * n + 1, stall=stall)
        cocotb.start_soon(src.send(job.tokens))
        got = await sink.receive_until(lambda r: len(r) >= len(job.expected), timeout=20_000)
        check_equal(got, job.expected, what=job.name + " output", seed=seed)
        for _ in range(20):
            status = await csr_read(dut, Reg.STATUS)
            if status & Status.DONE:
                break
        assert status & Status.DONE and not status & Status.ERROR, \
            "{}: status {:#x}".format(job.name, status)
        counters = {reg.name.lower(): await csr_read(dut, reg)
                    for reg in (Reg.CYCLES, Reg.BUSY, Reg.MAC_LANES, Reg.PAIRS, Reg.TOKENS_OUT)}
        assert counters["mac_lanes"] == job.mac_lanes, (job.name, counters, job.mac_lanes)
        assert counters["pairs"] == job.pairs and counters["tokens_out"] == job.n_tokens
        dut._log.info("%s: %s (ideal %.0f cycles)", job.name, counters, job.ideal_cycles)
        results.append(dict(job=job.name, ideal_cycles=job.ideal_cycles, **counters))
    assert results, "no job ran: RTSA_VECTORS/RTSA_LAYERS select nothing"
    if os.environ.get("RTSA_RESULTS"):
        with open(os.environ["RTSA_RESULTS"], "w") as f:
            json.dump(results, f, indent=1)
