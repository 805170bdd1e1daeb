"""Attention engine co-simulation on the trained benchmark model's tensors (Icarus in ``make
test``; Verilator with ``RTSA_VERILATOR_COSIM=1``, see :data:`sim.runner.ENGINE_COSIM_SIMULATORS`).

Block 0 of held-out clip 0, with the exported sub-vector masks (rho = 0.5) and dense, with
random valid/ready stalls, bit-exact against the golden model; the engine's MAC and sub-vector
counters must equal the golden model's performed work exactly. Verilator runs the first two
frames (98 tokens), Icarus (event driven) the first frame and a query block, each prefix
recomputed by the golden model. ``make bench`` runs the whole 392-token layers of every block
under Verilator, bit-exact too (the whole layer here took 116 s of a 2-core CI run).
"""

import pytest

from hw.config import preset
from sim.runner import ENGINE_COSIM_SIMULATORS, run_cocotb
from sim.vectors import benchmark_vectors

TAU = 4
RHO = 0.5

#: Per simulator: tokens (0: all 392) and modes.
WORKLOAD = {"icarus": (57, "sparse,dense"), "verilator": (98, "sparse")}


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", ENGINE_COSIM_SIMULATORS)
def test_attention_engine_on_benchmark_tensors(simulator):
    tokens, modes = WORKLOAD[simulator]
    d = benchmark_vectors(0, 0, tau=TAU, rho=RHO)
    ran = run_cocotb("attention_engine", preset("vidt"), simulator, "sim.tb_attention_engine",
                     seed=5, env={"RTSA_VECTORS": str(d), "RTSA_TOKENS": str(tokens),
                                  "RTSA_MODES": modes, "RTSA_STALL": "0.3", "RTSA_SEED": "5"})
    assert ran == 1
