"""Whole-block co-simulation on the trained benchmark model's tensors (Verilator, Icarus).

The residual stream entering block 0 of held-out test clips goes into the generated block:
LayerNorm, delta QKV, the on-chip sub-vector predictor and sparse attention, transposing
buffer, delta output projection, residual, LayerNorm, delta fc1, GELU, delta fc2, residual, all
on one PE array, with random valid/ready stalls; the output is bit-exact against the golden
model's own block (``IntBlock.forward`` under the eval's delta threshold and keep ratio).
Verilator runs frame 0 (dense) and the first query block of frame 1 (delta tokens), attention
over 57 tokens; Icarus, event driven, the first half query block (8 tokens took 152 s with
the build). ``make bench FULL=1`` runs longer prefixes. The attention buffers are sized for 64 tokens: the model compiles and runs
faster than with the preset's 512 (two frames at 512 took 5.5 min of a CI core).
"""

import pytest

from hw.config import preset
from sim.runner import run_cocotb

TAU = 4
RHO = 0.5
N_S = 49
#: The benchmark block with attention buffers for the tested prefixes.
CONFIG = preset("vidt").replace(max_tokens=64, name="vidt_t64")
#: Per simulator: test clip and tokens (a frame-major prefix).
WORKLOAD = {"verilator": (0, N_S + 8), "icarus": (1, 4)}


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", sorted(WORKLOAD))
def test_block_on_benchmark_tensors(simulator):
    clip, tokens = WORKLOAD[simulator]
    ran = run_cocotb("block", CONFIG, simulator, "sim.tb_block", seed=5,
                     env={"RTSA_CLIPS": str(clip), "RTSA_TOKENS": str(tokens),
                          "RTSA_TAU": str(TAU), "RTSA_RHO": str(RHO), "RTSA_STALL": "0.3",
                          "RTSA_SEED": "5"})
    assert ran == 1
