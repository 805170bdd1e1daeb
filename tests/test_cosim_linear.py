"""Linear engine co-simulation on the trained benchmark model's tensors (Icarus in ``make
test``; Verilator with ``RTSA_VERILATOR_COSIM=1``, see :data:`sim.runner.ENGINE_COSIM_SIMULATORS`).

Every token-wise layer of a block (QKV, output projection, fc1, fc2; Icarus: QKV and fc2) of
held-out clips, the first token frames of each (frame 0, dense, included), delta mode with random
valid/ready stalls, bit-exact against the golden model; the engine's MAC counter must equal
the golden model's performed MACs exactly. The dense baseline (delta skipping disabled) runs
on one layer. The full 8-frame layers are what ``make bench`` runs.
"""

import pytest

from hw.config import preset
from sim.runner import ENGINE_COSIM_SIMULATORS, run_cocotb
from sim.vectors import benchmark_vectors

TAU = 4
N_S = 49            # tokens per frame of the benchmark model (7 x 7)


#: Per simulator: (clip, block) pairs, tokens and layers. Icarus (event driven, about 800
#: engine cycles per second; two frames of all four layers took 450 s of a 2-core CI run, fc2
#: alone on this prefix 190 s) runs one clip's frame 0 and the first query block of frame 1
#: (dense and delta tokens) on the output projection: wide (RESID) output like fc2, a quarter
#: of its inputs (the narrow output mode and fc2's long reduction run under Verilator);
#: Verilator runs two clips (blocks 0 and 2) on every layer, the same prefix (three frames
#: took 111 s of a CI core).
WORKLOAD = {"icarus": (((0, 0),), N_S + 8, "proj"),
            "verilator": (((0, 0), (1, 2)), N_S + 8, "qkv,proj,fc1,fc2")}


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", ENGINE_COSIM_SIMULATORS)
def test_linear_engine_on_benchmark_tensors(simulator):
    clips, tokens, layers = WORKLOAD[simulator]
    dirs = [benchmark_vectors(clip, block, tau=TAU) for clip, block in clips]
    ran = run_cocotb("linear_engine", preset("vidt"), simulator, "sim.tb_linear_engine",
                     seed=3, env={"RTSA_VECTORS": ",".join(map(str, dirs)),
                                  "RTSA_TOKENS": str(tokens), "RTSA_LAYERS": layers,
                                  "RTSA_STALL": "0.3", "RTSA_SEED": "3"})
    assert ran == 1


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", ENGINE_COSIM_SIMULATORS)
def test_linear_engine_dense_baseline(simulator):
    d = benchmark_vectors(0, 0, tau=TAU)
    # Dense tokens only: two query blocks under Icarus (two frames took 113 s on a 2-core CI
    # machine), a frame under Verilator.
    tokens = N_S if simulator == "verilator" else 16
    run_cocotb("linear_engine", preset("vidt"), simulator, "sim.tb_linear_engine", seed=4,
               env={"RTSA_VECTORS": str(d), "RTSA_LAYERS": "proj", "RTSA_TOKENS": str(tokens),
                    "RTSA_MODES": "dense", "RTSA_STALL": "0.2", "RTSA_SEED": "4"})
