"""Run-through co-simulation on the trained benchmark model's tensors (Icarus, Verilator).

The QKV layer's input tokens of block 0 go into the generated run-through datapath; the delta
projection's q, k, v never leave the chip and feed sub-vector-sparse attention on the same PE
array. Outputs are bit-exact against the golden model, with random valid/ready stalls.
Verilator runs the whole 392-token clip (checked against the exported trace itself) and, in a
second run, two clips back to back (the second one's projection overlaps the first one's
attention); Icarus runs the first frame of two clips.
"""

import pytest

from hw.config import preset
from sim.runner import run_cocotb
from sim.vectors import benchmark_vectors

TAU = 4
RHO = 0.5
N_S = 49


def _run(simulator, clips, tokens, seed):
    dirs = [benchmark_vectors(c, 0, tau=TAU, rho=RHO) for c in clips]
    return run_cocotb("run_through", preset("vidt"), simulator, "sim.tb_run_through",
                      seed=seed, env={"RTSA_VECTORS": ",".join(map(str, dirs)),
                                      "RTSA_TOKENS": str(tokens), "RTSA_STALL": "0.3",
                                      "RTSA_SEED": str(seed)})


@pytest.mark.cosim
def test_run_through_icarus_two_clips_first_frame():
    assert _run("icarus", (0, 1), N_S, 7) == 1


@pytest.mark.cosim
def test_run_through_verilator_whole_clip():
    assert _run("verilator", (0,), 0, 8) == 1


@pytest.mark.cosim
@pytest.mark.slow
def test_run_through_verilator_two_clips():
    assert _run("verilator", (0, 1), 0, 9) == 1
