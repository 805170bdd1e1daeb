"""Whole-model co-simulation of a small configuration (Verilator): a clip of the seeded tiny
model (:func:`sim.model_job.tiny_model`: 16 tokens, 2 blocks) through the generated Verilog
of the whole model, without STA (so the last block's pass runs the head; STA and the head
pass on the host's kept tokens: tests/test_model.py), delta projections and sub-vector
attention, random stalls; the logits equal ``IntVidT.forward``'s, bit for bit, and every
stage's output and counters are checked on the way. (The benchmark model's clips, 392 tokens
and 4 blocks, are a bench-scale run; see the README.)"""

import json

import pytest

from hw import cycles
from sim.runner import run_cocotb
from tests.test_model import CFG, SEED


@pytest.mark.cosim
def test_model_on_a_tiny_clip_under_verilator():
    ran = run_cocotb("model", CFG, "verilator", "sim.tb_model", seed=3,
                     env={"RTSA_MODEL_SEED": str(SEED), "RTSA_CLIP": "1", "RTSA_TAU": "2",
                          "RTSA_RHO": "0.5", "RTSA_R": "0", "RTSA_STALL": "0.3",
                          "RTSA_SEED": "3"})
    assert ran == 1


@pytest.mark.cosim
def test_model_passes_take_the_cycles_the_cycle_model_predicts(tmp_path):
    """The same clip with no stalls (the cycle model's condition): every pass's cycles within
    :data:`hw.cycles.TOLERANCE` of :func:`hw.cycles.pass_cycles` of its workload."""
    results = tmp_path / "model.json"
    run_cocotb("model", CFG, "verilator", "sim.tb_model", seed=3,
               env={"RTSA_MODEL_SEED": str(SEED), "RTSA_CLIP": "1", "RTSA_TAU": "2",
                    "RTSA_RHO": "0.5", "RTSA_R": "0", "RTSA_STALL": "0", "RTSA_SEED": "3",
                    "RTSA_RESULTS": str(results)})
    passes = json.loads(results.read_text())["passes"]
    assert len(passes) == 2
    for p in passes:
        error = abs(p["predicted_cycles"] - p["cycles"]) / p["cycles"]
        assert error <= cycles.TOLERANCE, (p["name"], p["cycles"], p["predicted_cycles"])
