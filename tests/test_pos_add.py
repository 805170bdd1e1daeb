"""Positional add under Amaranth's simulator: bit-exact with the integer model's embedding add
(``qtorch.saturate(embed + pos, RESID)``), saturation at both ends, bad settings and tokens."""

import random

import pytest
import torch

from golden import contract, qtorch
from hw.config import preset
from hw.pipeline import Pipeline
from hw.pos_add import REGISTERS, PosAdd, pos_words
from sim.driver import Plan, run_amaranth, run_amaranth_plans

SEED = 6160
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_tokens=8, max_heads=2,
                             name="pos16")
R = contract.RESID


def beats_of(x):
    V = CFG.lanes
    return [{"data": [int(v) for v in row[s:s + V]], "last": s + V == len(row)}
            for row in x.tolist() for s in range(0, len(row), V)]


def plan(x, pos, *, load=True, inputs=None, want=None, name="pos"):
    n, d = x.shape
    expected = qtorch.saturate(x + pos[:n], R) if want is None else want
    setup = ([("pulse", "pos", ("reset_load",)), ("load", "pos.p_load", pos_words(CFG, pos.tolist()))]
             if load else [])
    return Plan(name, setup=setup + [
        ("pulse", "pos", ("clear_error",)), ("write", "pos", "d", d),
        ("write", "pos", "tokens", n), ("start", "pos", True)],
        inputs=[("i", beats_of(x) if inputs is None else inputs)],
        outputs=[("o", beats_of(expected))], counters={"pos": {"tokens_out": n}},
        done=["pos"], timeout=5_000)


def top():
    return Pipeline(CFG, [("pos", PosAdd(CFG))])


def rand(rng, n, d, lo=R.min, hi=R.max):
    return torch.tensor([[rng.randint(lo, hi) for _ in range(d)] for _ in range(n)])


@pytest.mark.parametrize("d", [4, 16])
def test_add_is_exact_and_saturates(d):
    """Random tokens and tables, sums past both RESID ends (saturated), and a second run on
    the same table without reloading (fewer tokens)."""
    rng = random.Random(SEED + d)
    n = CFG.max_tokens
    x, pos = rand(rng, n, d), rand(rng, n, d)
    x[0], pos[0] = R.max, R.max              # saturates high
    x[1], pos[1] = R.min, R.min              # saturates low
    x[2], pos[2] = R.max, R.min              # -1, exact
    assert int((x + pos).max()) > R.max and int((x + pos).min()) < R.min
    run_amaranth_plans(top(), [plan(x, pos), plan(x[:3], pos, load=False)], seed=SEED,
                       stall=0.3)


def test_the_benchmark_embedding_add():
    """The trained model's positional table on a test clip's first tokens: the stage's sum
    is IntVidT.tokens' own."""
    from golden import benchmark
    from golden.vidt import tubelets
    q = benchmark.int_model()
    videos, _ = benchmark.clips(1)
    cfg = preset("vidt").replace(max_tokens=8, name="vidt_t8")
    x = tubelets(videos.to(torch.int64) - 128, q.cfg)
    embedded = q.embed.requantize(q.embed.accumulate(x))[0, :8]
    want = q.tokens(videos)[0, :8]
    p = Plan("bench", setup=[("load", "pos.p_load", pos_words(cfg, q.pos[:8].tolist())),
                             ("write", "pos", "d", 64), ("write", "pos", "tokens", 8),
                             ("start", "pos", True)],
             inputs=[("i", [{"data": [int(v) for v in r[s:s + 8]], "last": s + 8 == 64}
                            for r in embedded.tolist() for s in range(0, 64, 8)])],
             outputs=[("o", [{"data": [int(v) for v in r[s:s + 8]], "last": s + 8 == 64}
                             for r in want.tolist() for s in range(0, 64, 8)])],
             counters={"pos": {"tokens_out": 8}}, done=["pos"], timeout=5_000)
    run_amaranth(Pipeline(cfg, [("pos", PosAdd(cfg))]), p, seed=SEED, stall=0.2)


def test_a_short_token_is_flagged_and_the_next_token_adds_its_own_row():
    rng = random.Random(SEED + 1)
    d, n = 8, 3
    x, pos = rand(rng, n, d, -1000, 1000), rand(rng, n, d, -1000, 1000)
    beats = beats_of(x)
    short = [dict(beats[0], last=True)] + beats[2:]       # token 0 loses its second beat
    want = qtorch.saturate(x + pos, R)
    bad = plan(x, pos, inputs=short)
    bad.outputs = [("o", [dict(b) for b in beats_of(want)])]
    del bad.outputs[0][1][1]
    bad.outputs[0][1][0]["last"] = True
    good = plan(rand(rng, 2, d), pos, load=False)
    res = run_amaranth_plans(top(), [bad, good], seed=SEED, stall=0.2, check=[False, True])
    st = REGISTERS.status(res[0]["status"]["pos"])
    assert st.errors.token and st.done, REGISTERS.describe(res[0]["status"]["pos"])
    assert res[0]["outputs"]["o"] == bad.outputs[0][1]


@pytest.mark.parametrize("d,tokens,loaded", [(0, 1, 8), (6, 1, 8), (20, 1, 8), (8, 0, 8),
                                             (8, 9, 8), (8, 3, 2)])
def test_bad_settings_refuse_to_start(d, tokens, loaded):
    """Out-of-range settings, and a table shorter than the run (``loaded`` tokens of it)."""
    pos = torch.zeros((loaded, d if 4 <= d <= 16 and d % 4 == 0 else 8), dtype=torch.int64)
    p = Plan("bad", setup=[("pulse", "pos", ("reset_load",)),
                           ("load", "pos.p_load", pos_words(CFG, pos.tolist())),
                           ("write", "pos", "d", d), ("write", "pos", "tokens", tokens),
                           ("start", "pos", False), ("status", "pos", "after"),
                           ("ready", "i", "ready")])
    seen = run_amaranth(top(), p, seed=0, stall=0)["seen"]
    st = REGISTERS.status(seen["after"])
    assert st.errors.config and not st.running and not seen["ready"]
