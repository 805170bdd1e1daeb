"""Whole-block co-simulation on the trained benchmark model's tensors (Verilator, Icarus).

The residual stream entering block 0 of held-out test clips goes into the generated block:
LayerNorm, delta QKV, sub-vector attention, transposing buffer, delta output projection,
residual, LayerNorm, delta fc1, GELU, delta fc2, residual, all on one PE array, with random
valid/ready stalls; the output is bit-exact against the golden model's own block
(``IntBlock.forward`` under the eval's delta threshold and keep ratio). Verilator runs the first
two frames (a dense frame and a delta frame, attention over 98 tokens); Icarus, event driven,
the first query blocks of frame 0. ``make bench`` runs whole clips.
"""

import pytest

from hw.config import preset
from sim.runner import run_cocotb

TAU = 4
RHO = 0.5
N_S = 49
#: The benchmark block with attention buffers for the tested prefixes.
CONFIG = preset("vidt").replace(max_tokens=128, name="vidt_t128")
#: Per simulator: test clip and tokens (a frame-major prefix).
WORKLOAD = {"verilator": (0, 2 * N_S), "icarus": (1, 8)}


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", sorted(WORKLOAD))
def test_block_on_benchmark_tensors(simulator):
    clip, tokens = WORKLOAD[simulator]
    ran = run_cocotb("block", CONFIG, simulator, "sim.tb_block", seed=5,
                     env={"RTSA_CLIPS": str(clip), "RTSA_TOKENS": str(tokens),
                          "RTSA_TAU": str(TAU), "RTSA_RHO": str(RHO), "RTSA_STALL": "0.3",
                          "RTSA_SEED": "5"})
    assert ran == 1
