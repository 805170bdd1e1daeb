"""Attention engine under Amaranth's simulator: sub-vector-sparse attention bit-exact with the
golden model (:func:`golden.intvidt.attention_core`), bad configurations and malformed streams."""

import random

import pytest

from golden import contract
from hw.attention_engine import REGISTERS, AttentionEngine
from hw.config import preset
from hw.run_through import AttentionTop
from sim.attention_job import attention_job
from sim.driver import Plan, run_amaranth
from sim.scoreboard import check_equal
from sim.stimulus import random_sequence

SEED = 6061

#: 2 rows x 4 lanes, head_dim 8 (two A V passes of ... four, QK groups of two columns).
SMALL = preset("tiny").replace(lanes=4, rows=2, requant_lanes=4, bitmap_word=8, max_d=16,
                               max_heads=2, max_tokens=32, weight_depth=512, max_positions=8,
                               name="att_r2v4")
#: One row: every group is a single column, every A V pass a single dimension.
ONE_ROW = SMALL.replace(rows=1, name="att_r1v4")

SOFTMAX = dict(zip(("softmax_mult", "softmax_shift"), contract.quantize_multiplier(0.03)))
OUT = dict(zip(("attn_mult", "attn_shift"), contract.quantize_multiplier(1 / 400)))


def run_job(job, seed, stall=0.3, *, qkv=None, masks=None, timeout=100_000, check=True):
    """Run ``job`` on a fresh engine; the driver's result (checked unless ``check`` is
    false)."""
    res = run_amaranth(AttentionTop(job.config), job.plan(qkv=qkv, masks=masks, timeout=timeout),
                       seed=seed, stall=stall, check=check)
    counters = res["counters"]["attention"]
    assert counters["busy"] <= counters["cycles"], counters
    return res


def _status(res):
    return REGISTERS.status(res["status"]["attention"])


@pytest.mark.parametrize("cfg", [SMALL, ONE_ROW], ids=lambda c: c.name)
@pytest.mark.parametrize("case", ["sparse_stalls", "dense_two_sequences", "one_head",
                                  "empty_blocks", "three_one_block_sequences"])
def test_engine_matches_golden(cfg, case):
    seed = SEED + len(case) * 31 + cfg.rows
    rng = random.Random(seed)
    if case == "sparse_stalls":        # a partial last block (13 = 3 x 4 + 1)
        seqs, stall = [random_sequence(rng, cfg, 2, 13, density=0.4)], 0.3
    elif case == "dense_two_sequences":
        seqs, stall = [random_sequence(rng, cfg, 2, 8, density=None) for _ in range(2)], 0.0
    elif case == "one_head":
        seqs, stall = [random_sequence(rng, cfg, 1, 10, density=0.6)], 0.2
    elif case == "three_one_block_sequences":
        # Found by `make soak` (seed 13000140): with one query block a sequence, the loader
        # reached sequence 3 while sequence 1's A V still ran, and took sequence 1's Q and K
        # from the slot the writer had not refilled yet.
        seqs, stall = [random_sequence(rng, cfg, 1, 2, density=None) for _ in range(3)], 0.0
    else:
        seqs, stall = [random_sequence(rng, cfg, 2, 12, density=0.5,
                                       empty_blocks={(0, 1), (1, 0)})], 0.1
    job = attention_job(cfg, seqs, **SOFTMAX, **OUT, name=case)
    run_job(job, seed, stall)


def test_bad_configuration_does_not_start():
    rng = random.Random(SEED)
    job = attention_job(SMALL, [random_sequence(rng, SMALL, 2, 8)], **SOFTMAX, **OUT)
    for reg, value in (("tokens", 0), ("tokens", SMALL.max_tokens + 1),
                       ("heads", SMALL.max_heads + 1), ("sequences", 0)):
        writes = [(r, value if r == reg else v) for r, v in job.registers]
        plan = Plan(name="refused", setup=[("write", "attention", r, v) for r, v in writes] + [
            ("start", "attention", False), ("status", "attention", "status"),
            ("ready", "i", "ready")])
        seen = run_amaranth(AttentionTop(SMALL), plan, seed=0, stall=0)["seen"]
        status = REGISTERS.status(seen["status"])
        assert status.errors.config and not status.running, (reg, value, seen)
        assert not seen["ready"]


def test_mask_column_past_n_is_flagged_and_pruned():
    """A mask bit at a column >= N sets the ``mask`` error; that entry is treated as pruned and every
    output stays exact."""
    seed = SEED + 5
    rng = random.Random(seed)
    seq = random_sequence(rng, SMALL, 2, 10, density=0.5)
    job = attention_job(SMALL, [seq], **SOFTMAX, **OUT)
    masks = [dict(b) for b in job.masks]
    masks[1]["mask"] |= 1 << 12
    res = run_job(job, seed, 0.2, masks=masks, check=False)
    check_equal(res["outputs"]["o"], job.expected, what="output", seed=seed)
    assert _status(res).done and _status(res).errors.mask, res["status"]


def test_short_qkv_token_is_flagged_and_run_finishes():
    seed = SEED + 6
    rng = random.Random(seed)
    job = attention_job(SMALL, [random_sequence(rng, SMALL, 2, 8, density=0.5)], **SOFTMAX, **OUT)
    per_token = len(job.qkv) // 8
    qkv = [dict(b) for b in job.qkv]
    del qkv[2 * per_token + 3]          # token 2 loses a beat: its `last` comes early
    res = run_job(job, seed, 0.0, qkv=qkv, check=False)
    assert len(res["outputs"]["o"]) == len(job.expected)
    assert _status(res).done and _status(res).errors.qkv, res["status"]


def test_qkv_value_outside_int8_is_flagged():
    seed = SEED + 7
    rng = random.Random(seed)
    job = attention_job(SMALL, [random_sequence(rng, SMALL, 1, 4, density=None)], **SOFTMAX, **OUT)
    qkv = [dict(b, data=list(b["data"])) for b in job.qkv]
    qkv[0]["data"][0] = 300
    res = run_job(job, seed, 0.0, qkv=qkv, check=False)
    assert _status(res).done and _status(res).errors.qkv, res["status"]


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_head_dim_must_be_a_multiple_of_lanes():
    cfg = SMALL.replace(max_d=12, max_heads=2, name="hd6")          # head_dim 6, lanes 4
    with pytest.raises(ValueError, match=r"head_dim \(6\) to be a multiple of lanes \(4\)"):
        AttentionEngine(cfg)
