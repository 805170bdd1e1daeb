"""Mean pooling under Amaranth's simulator: bit-exact with the integer head's
``div_half_up(sum over tokens, N)``, rounding halves of both signs, extremes, runs of
different token counts back to back, bad settings and tokens."""

import random

import pytest
import torch

from golden import contract, qtorch
from hw.config import preset
from hw.mean_pool import REGISTERS, MeanPool
from hw.pipeline import Pipeline
from sim.driver import Plan, run_amaranth, run_amaranth_plans

SEED = 8128
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_tokens=12, max_heads=2,
                             name="pool16")
A = contract.ACT


def beats_of(x):
    V = CFG.lanes
    return [{"data": [int(v) for v in row[s:s + V]], "last": s + V == len(row)}
            for row in x.tolist() for s in range(0, len(row), V)]


def plan(x, *, inputs=None, name="pool"):
    n, d = x.shape
    pooled = qtorch.div_half_up(x.sum(0, keepdim=True), n)     # the golden head's pooling
    return Plan(name, setup=[
        ("pulse", "pool", ("clear_error",)), ("write", "pool", "d", d),
        ("write", "pool", "tokens", n), ("start", "pool", True)],
        inputs=[("i", beats_of(x) if inputs is None else inputs)],
        outputs=[("o", beats_of(pooled))],
        counters={"pool": {"tokens_in": n, "tokens_out": 1}}, done=["pool"], timeout=5_000)


def top():
    return Pipeline(CFG, [("pool", MeanPool(CFG))])


def rand(rng, n, d):
    return torch.tensor([[rng.randint(A.min, A.max) for _ in range(d)] for _ in range(n)])


def test_means_are_exact_with_rounding_halves_and_extremes():
    """Channels built to hit every rounding case: sums that are exact halves of both signs
    (half up: -0.5 -> 0, 0.5 -> 1, -1.5 -> -1), the int8 extremes over the most tokens,
    random channels; then runs of 1, 5 and 12 tokens on the same hardware."""
    rng = random.Random(SEED)
    n, d = 2, 16
    halves = torch.tensor([[-1, 1, -3, 3, A.min, A.max, A.min, 0] + [0] * 8,
                           [0, 0, 0, 0, A.min, A.max, A.max, 1] + [0] * 8])
    halves[:, 8:] = rand(rng, 2, 8)
    assert qtorch.div_half_up(halves.sum(0), n)[:4].tolist() == [0, 1, -1, 2]
    full = rand(rng, CFG.max_tokens, d)
    full[:, 0], full[:, 1] = A.min, A.max
    plans = [plan(halves), plan(rand(rng, 1, d)), plan(rand(rng, 5, 8)), plan(full)]
    run_amaranth_plans(top(), plans, seed=SEED, stall=0.3)


def test_the_benchmark_head_pooling():
    """The trained model's final LayerNorm on block 0's output of a test clip, pooled as
    head_forward pools it (its first two frames, 98 tokens, on a vidt configuration)."""
    from golden import benchmark
    from golden.intvidt import Execution
    q = benchmark.int_model()
    videos, _ = benchmark.clips(1)
    x, _ = q.blocks[0].forward(q.tokens(videos), Execution(), 0, None)
    normed = q.norm(x)[0, :98]
    cfg = preset("vidt")
    V = cfg.lanes
    beats = [{"data": [int(v) for v in r[s:s + V]], "last": s + V == 64}
             for r in normed.tolist() for s in range(0, 64, V)]
    want = qtorch.div_half_up(normed.sum(0), normed.shape[0])
    p = Plan("bench", setup=[("write", "pool", "d", 64),
                             ("write", "pool", "tokens", normed.shape[0]),
                             ("start", "pool", True)],
             inputs=[("i", beats)],
             outputs=[("o", [{"data": [int(v) for v in want[s:s + V]], "last": s + V == 64}
                             for s in range(0, 64, V)])],
             counters={"pool": {"tokens_out": 1}}, done=["pool"], timeout=20_000)
    run_amaranth(Pipeline(cfg, [("pool", MeanPool(cfg))]), p, seed=SEED, stall=0.0)


def test_a_short_token_and_out_of_range_values_are_flagged_then_a_run_is_exact():
    rng = random.Random(SEED + 1)
    x = rand(rng, 3, 8)
    beats = beats_of(x)
    bad_in = [dict(beats[0], last=True)] + beats[2:]        # token 0 loses its second beat
    bad_in[1] = dict(bad_in[1], data=[300, -300, 5, 5])       # saturated to 127, -128
    bad = plan(x, inputs=bad_in)
    good = plan(rand(rng, 4, 8))
    res = run_amaranth_plans(top(), [bad, good], seed=SEED, stall=0.2, check=[False, True])
    st = REGISTERS.status(res[0]["status"]["pool"])
    assert st.errors.token and st.errors.range and st.done, \
        REGISTERS.describe(res[0]["status"]["pool"])


@pytest.mark.parametrize("d,tokens", [(0, 1), (6, 1), (20, 1), (8, 0), (8, 13)])
def test_bad_settings_refuse_to_start(d, tokens):
    p = Plan("bad", setup=[("write", "pool", "d", d), ("write", "pool", "tokens", tokens),
                           ("start", "pool", False), ("status", "pool", "after"),
                           ("ready", "i", "ready")])
    seen = run_amaranth(top(), p, seed=0, stall=0)["seen"]
    st = REGISTERS.status(seen["after"])
    assert st.errors.config and not st.running and not seen["ready"]
