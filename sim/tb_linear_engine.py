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
from hw.run_through import LinearTop
from sim.driver import settings_from_env
from sim.linear_job import job_from_vectors
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


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
    env = settings_from_env()
    top = LinearTop(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    results = []
    for n, job in enumerate(_jobs(cfg)):
        # Parameters load at full speed; the token and output streams stall at random.
        res = await run_cocotb_plan(dut, top, job.plan("linear"), seed=env["seed"] + 2 * n,
                                    stall=env["stall"])
        counters = res["counters"]["linear"]
        dut._log.info("%s: %s (ideal %.0f cycles)", job.name, counters, job.ideal_cycles)
        results.append(dict(job=job.name, ideal_cycles=job.ideal_cycles,
                            predicted_cycles=job.predicted_cycles, **counters))
    assert results, "no job ran: RTSA_VECTORS/RTSA_LAYERS select nothing"
    if env["results"]:
        with open(env["results"], "w") as f:
            json.dump(results, f, indent=1)
