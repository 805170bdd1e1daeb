"""The on-chip sub-vector predictor under Amaranth's simulator: its mask beats equal the golden
keep policy (:meth:`golden.subvector.SubvectorAttention.keep`) bit for bit, its counters the
golden predictor MACs; pooling rounding, ties, dense mode, bad settings and a malformed token
followed by a good run."""

import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from golden import contract
from hw.pipeline import Pipeline
from hw.arith import div_half_up
from hw.predictor import REGISTERS, Predictor
from sim.attention_job import Sequence
from sim.driver import Plan, run_amaranth, run_amaranth_plans
from sim.predictor_job import predictor_job
from tests.test_attention_engine import ONE_ROW, SMALL

SEED = 7127


def top(cfg):
    return Pipeline(cfg, [("predict", Predictor(cfg))])


def random_sequence(rng, cfg, heads, n, values=None):
    hd = cfg.head_dim

    def t():
        return torch.tensor([[[values(rng) if values else
                               rng.choice([rng.randint(-30, 30), rng.randint(-128, 127)])
                               for _ in range(hd)] for _ in range(n)] for _ in range(heads)])
    return Sequence(t(), t(), t())


def run_job(job, seed, stall=0.3, **kw):
    res = run_amaranth(top(job.config), job.plan(**kw), seed=seed, stall=stall)
    return res


def test_pooling_division_is_the_contract_mean_for_every_sum_and_count():
    """Every sum of up to ``lanes`` int8 values and every count 1..8 (rounding halves
    included): the hardware expression equals ``contract.div_half_up``."""
    fmt = contract.pooled_sum_format(8)
    m = Module()
    total, count = Signal(signed(fmt.bits)), Signal(range(9))
    out = Signal(signed(fmt.bits + 2))
    m.d.comb += out.eq(div_half_up(total, count))
    sim = Simulator(m)
    bad = []

    async def bench(ctx):
        for c in range(1, 9):
            for s in range(-128 * c, 127 * c + 1):
                ctx.set(total, s)
                ctx.set(count, c)
                if ctx.get(out) != contract.div_half_up(s, c):
                    bad.append((s, c, ctx.get(out)))
    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:10]


@pytest.mark.parametrize("cfg", [SMALL, ONE_ROW], ids=lambda c: c.name)
@pytest.mark.parametrize("case", ["partial_block", "two_sequences", "keep_one", "one_head"])
def test_masks_match_golden(cfg, case):
    seed = SEED + 17 * len(case) + cfg.rows
    rng = random.Random(seed)
    n, heads, seqs, rho, stall = {
        "partial_block": (13, 2, 1, 0.5, 0.3),      # 13 = 3 x 4 + 1: a one-query last block
        "two_sequences": (8, 2, 2, 0.4, 0.2),
        "keep_one": (11, 2, 1, 0.01, 0.1),          # ceil(0.01 x 11) = 1 column
        "one_head": (20, 1, 1, 0.7, 0.0),
    }[case]
    job = predictor_job(cfg, [random_sequence(rng, cfg, heads, n) for _ in range(seqs)], rho,
                        name=case)
    assert job.mac_lanes > 0
    run_job(job, seed, stall)


def test_ties_go_to_the_lower_column_and_rounding_halves():
    """Keys with equal scores (repeated keys) must keep the lower columns; queries whose block
    sums sit on rounding halves (sum = 2 mod 4 over four queries) must pool half up."""
    rng = random.Random(SEED + 1)
    cfg, n, heads = SMALL, 12, 2
    hd = cfg.head_dim
    q = torch.tensor([[[(2 if t % 4 == 0 else 0) * (1 if c % 2 else -1) for c in range(hd)]
                       for t in range(n)] for _ in range(heads)])
    base = [[rng.randint(-3, 3) for _ in range(hd)] for _ in range(3)]
    k = torch.tensor([[base[t % 3] for t in range(n)] for _ in range(heads)])
    seq = Sequence(q, k, torch.zeros_like(k))
    job = predictor_job(cfg, [seq], 0.5, name="ties")
    run_job(job, SEED + 1, 0.2)


def test_extreme_values_reach_the_largest_scores():
    cfg = SMALL
    rng = random.Random(SEED + 2)
    seqs = [random_sequence(rng, cfg, 2, 9, values=lambda r: r.choice([-128, 127]))]
    run_job(predictor_job(cfg, seqs, 0.5, name="extremes"), SEED + 2, 0.1)


def test_dense_keep_issues_no_products():
    """``keep >= N``: every column of every block, and nothing on the array."""
    rng = random.Random(SEED + 3)
    job = predictor_job(SMALL, [random_sequence(rng, SMALL, 2, 10) for _ in range(2)], 1.0,
                        name="dense")
    assert job.busy == 0 and job.mac_lanes == 0
    run_job(job, SEED + 3, 0.2)


def test_bad_settings_do_not_start():
    rng = random.Random(SEED + 4)
    job = predictor_job(SMALL, [random_sequence(rng, SMALL, 2, 8)], 0.5)
    for reg, value in (("tokens", 0), ("tokens", SMALL.max_tokens + 1), ("heads", 0),
                       ("heads", SMALL.max_heads + 1), ("sequences", 0), ("keep", 0),
                       ("keep", 9)):
        writes = [(r, value if r == reg else v) for r, v in job.registers]
        plan = Plan(name="refused", setup=[("write", "predict", r, v) for r, v in writes] + [
            ("start", "predict", False), ("status", "predict", "status"), ("ready", "i", "ready")])
        seen = run_amaranth(top(SMALL), plan, seed=0, stall=0)["seen"]
        status = REGISTERS.status(seen["status"])
        assert status.errors.config and not status.running, (reg, value, seen)
        assert not seen["ready"]


def test_short_token_is_flagged_then_the_next_run_is_exact():
    """A QKV token one beat short: ``qkv`` error, the run still ends (every mask beat leaves),
    and a good run on the same hardware after it is bit-exact."""
    seed = SEED + 5
    rng = random.Random(seed)
    bad = predictor_job(SMALL, [random_sequence(rng, SMALL, 2, 8)], 0.5, name="short")
    good = predictor_job(SMALL, [random_sequence(rng, SMALL, 2, 13)], 0.5, name="after")
    per_token = len(bad.qkv) // 8
    qkv = [dict(b) for b in bad.qkv]
    del qkv[3 * per_token + 2]
    bad_plan = bad.plan(qkv=qkv)
    bad_plan.outputs = [("o", qkv), ("predict.masks", [None] * len(bad.masks))]
    bad_plan.counters = {"predict": {"blocks": len(bad.masks)}}
    good_plan = good.plan()
    good_plan.setup = [("pulse", "predict", ("clear_error",))] + good_plan.setup
    results = run_amaranth_plans(top(SMALL), [bad_plan, good_plan], seed=seed, stall=0.2,
                                 check=[False, True])
    status = REGISTERS.status(results[0]["status"]["predict"])
    assert status.done and status.errors.qkv, results[0]["status"]
