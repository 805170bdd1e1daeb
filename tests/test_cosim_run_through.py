"""Run-through co-simulation on the trained benchmark model's tensors (Icarus in ``make test``;
Verilator with ``RTSA_VERILATOR_COSIM=1``, see :data:`sim.runner.ENGINE_COSIM_SIMULATORS`).

The QKV layer's input tokens of block 0 go into the generated run-through datapath; the delta
projection's q, k, v never leave the chip and feed sub-vector-sparse attention on the same PE
array. Outputs are bit-exact against the golden model, with random valid/ready stalls, on the
first tokens of the clips: under Verilator the first 24 of two held-out clips back to back, so
the second one's projection overlaps the first one's attention; under Icarus the first 16 of
one.
``make bench`` runs two whole clips (and three token counts) the same way, bit-exact too.
"""

import pytest

from hw.config import preset
from sim.runner import ENGINE_COSIM_SIMULATORS, run_cocotb
from sim.vectors import benchmark_vectors

TAU = 4
RHO = 0.5


def _run(simulator, clips, tokens, seed):
    dirs = [benchmark_vectors(c, 0, tau=TAU, rho=RHO) for c in clips]
    return run_cocotb("run_through", preset("vidt"), simulator, "sim.tb_run_through",
                      seed=seed, env={"RTSA_VECTORS": ",".join(map(str, dirs)),
                                      "RTSA_TOKENS": str(tokens), "RTSA_STALL": "0.3",
                                      "RTSA_SEED": str(seed)})


#: Per simulator: the clips run back to back and their tokens (Icarus, event driven, runs
#: the first two query blocks of one: its whole first frame took 117 s on 2 cores; Verilator
#: three query blocks of two clips: two whole frames took 104 s with the build).
CLIPS = {"icarus": ((0,), 16), "verilator": ((0, 1), 24)}


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", ENGINE_COSIM_SIMULATORS)
def test_run_through_first_frame(simulator):
    clips, tokens = CLIPS[simulator]
    assert _run(simulator, clips, tokens, 7) == 1
