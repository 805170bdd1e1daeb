"""The whole model on one PE array under Amaranth's simulator: a clip in, the integer model's
logits out, bit for bit (embedding, positional add, every block with delta projections,
on-chip sub-vector predictor and STA pruning between blocks, final LayerNorm, mean pooling,
classifier). The run also covers what the block tests do not: two blocks' constants in
two layers (block 1's weights differ, so a run on the wrong layer fails), the STA reports
(checked on their ports), the ragged token set with listed positions, and a head pass on the
tokens the host kept."""

import pytest

from hw.model import Model
from sim.driver import run_amaranth_plans
from sim.model_job import model_job, tiny_model
from tests.test_attention_engine import SMALL

SEED = 7301
#: The small configuration of the array with two layers (the tiny model's two blocks).
CFG = SMALL.replace(max_layers=2, name="small_model")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(SEED)


def test_a_clip_in_the_integer_models_logits_out(tiny):
    """Two blocks (delta tau = 2, sub-vector rho = 0.5) with STA r = 1 (the blocks run on 16
    and 10 tokens, the host keeps 9 for a head pass); random stalls. model_job checks its
    logits against IntVidT.forward; the plans check every stage's output and counters.
    (Without STA, the head in the last block's pass: tests/test_cosim_model.py.)"""
    r = 1
    q, videos = tiny
    job = model_job(CFG, q, videos[r], tau=2, rho=0.5, r=r)
    res = run_amaranth_plans(Model(CFG), job.plans(), seed=SEED + r, stall=0.2)
    got = [v for beat in res[-1]["outputs"]["o"] for v in beat["data"]]
    assert got == job.logits.tolist()
