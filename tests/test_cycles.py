"""The cycle model (:mod:`hw.cycles`): its predictions against the RTL's counters under
Amaranth's simulator (full-rate streams, as the model assumes), and unit checks of the model
itself whose expectations are worked out by hand."""

import dataclasses
import random

import pytest

from hw import cycles
from hw.block import Block
from hw.run_through import AttentionTop, LinearTop, RunThrough
from sim.attention_job import attention_job
from sim.block_job import block_job
from sim.driver import run_amaranth
from sim.linear_job import job_from_layer
from sim.stimulus import random_layer, random_sequence, random_tokens
from tests.test_attention_engine import ONE_ROW, OUT, SMALL, SOFTMAX
from tests.test_linear_engine import CONFIGS
from tests.test_block import MODEL as BLOCK_MODEL, SEED as BLOCK_SEED, small_block  # noqa: F401
from tests.test_run_through import _job as run_through_job

SEED = 8088
#: rows 2 x lanes 4 (requant_lanes 4), bitmap_word 8, decode_width 2.
R2V4 = CONFIGS["r2v4k2"]


def _check_prediction(what, seed, measured, predicted, rtl_busy, model_busy):
    """The RTL's ``cycles`` within :data:`hw.cycles.TOLERANCE` of the prediction, and its busy
    beats (per client) equal to the model's exactly."""
    error = abs(measured - predicted) / measured
    assert error <= cycles.TOLERANCE, (
        "{} (seed {}): measured {} cycles, predicted {}: error {:.2%} > {:.0%}".format(
            what, seed, measured, predicted, error, cycles.TOLERANCE))
    assert rtl_busy == model_busy, "{} (seed {}): busy measured {}, model {}".format(
        what, seed, rtl_busy, model_busy)


# ---- the model against the RTL ---------------------------------------------------------------


@pytest.mark.parametrize("cfg_name,delta", [("r2v4k2", True), ("tiny", False)],
                         ids=["delta_r2v4k2", "dense_tiny"])
def test_linear_layer_cycles_match_the_rtl(cfg_name, delta):
    """A delta layer and a dense one (``delta_enable=False``), 9 tokens of two bitmap words, a
    partial last output chunk where rows > 1."""
    cfg = CONFIGS[cfg_name]
    seed = SEED + 1 + 2 * delta
    rng = random.Random(seed)
    d_in = 2 * cfg.bitmap_word
    d_out = cfg.lanes * (2 * cfg.rows + 1)
    layer = random_layer(rng, d_out, d_in)
    x, frame, spatial = random_tokens(rng, n_t=3, n_s=3, d_in=d_in)
    job = job_from_layer(cfg, layer, x, frame, spatial, 3, tau=2, delta_enable=delta)
    res = run_amaranth(LinearTop(cfg), job.plan(timeout=20_000), seed=seed, stall=0.0)
    counters = res["counters"]["linear"]
    model = cycles.linear_cycles(cfg, job.work)
    assert cycles.ideal_linear_macs(job.work) == counters["mac_lanes"], (seed, counters)
    _check_prediction("linear {} delta={}".format(cfg_name, delta), seed, counters["cycles"],
                      job.predicted_cycles, counters["busy"], model.busy["linear"])


@pytest.mark.parametrize("delta", [False, True], ids=["dense", "delta"])
def test_tokens_of_one_word_and_one_chunk_follow_each_other_as_in_the_rtl(delta):
    """Eight tokens of one bitmap word into one output chunk: each token's beats are fewer than
    its encoder and pipeline cycles, so what limits them is the pair buffer's slot, which
    gates the decoder's writes (not the encoder's input: a model that gated the encoder
    predicted 105 cycles against the RTL's 89)."""
    seed = 505
    rng = random.Random(seed)
    layer = random_layer(rng, 4, R2V4.bitmap_word)
    x, frame, spatial = random_tokens(rng, n_t=4, n_s=2, d_in=R2V4.bitmap_word)
    job = job_from_layer(R2V4, layer, x, frame, spatial, 2, tau=2, delta_enable=delta)
    res = run_amaranth(LinearTop(R2V4), job.plan(timeout=20_000), seed=seed, stall=0.0)
    counters = res["counters"]["linear"]
    _check_prediction("one-word tokens delta={}".format(delta), seed, counters["cycles"],
                      job.predicted_cycles, counters["busy"],
                      cycles.linear_cycles(R2V4, job.work).busy["linear"])


@pytest.mark.parametrize("case", ["sparse", "dense"])
def test_attention_cycles_match_the_rtl(case):
    """Sparse: 2 heads of 13 tokens (a partial last query block), sub-vector masks keeping
    about 40 % of the columns, on 2 rows. Dense (no mask): 2 heads of 8 tokens on one row."""
    seed = SEED + 11 + len(case)
    rng = random.Random(seed)
    if case == "sparse":
        cfg, seqs = SMALL, [random_sequence(rng, SMALL, 2, 13, density=0.4)]
    else:
        cfg, seqs = ONE_ROW, [random_sequence(rng, ONE_ROW, 2, 8, density=None)]
    job = attention_job(cfg, seqs, **SOFTMAX, **OUT, name=case)
    res = run_amaranth(AttentionTop(cfg), job.plan(timeout=20_000), seed=seed, stall=0.0)
    counters = res["counters"]["attention"]
    model = cycles.attention_cycles(cfg, job.work)
    assert cycles.ideal_attention_macs(job.work, cfg.lanes) == counters["mac_lanes"], \
        (seed, counters)
    _check_prediction("attention {} on {}".format(case, cfg.name), seed, counters["cycles"],
                      job.predicted_cycles, counters["busy"], model.busy["attention"])


@pytest.mark.parametrize("sequences,rho", [(3, 0.5), (2, 1.0)])
def test_run_through_cycles_match_the_rtl(sequences, rho):
    """The delta QKV projection and attention on one array: three sparse sequences (the third
    waits on the first leaving attention) and two dense ones (rho 1)."""
    seed = SEED + 21 + 10 * sequences
    job = run_through_job(seed, sequences, rho)
    res = run_amaranth(RunThrough(SMALL), job.plan(timeout=50_000), seed=seed, stall=0.0)
    model = cycles.run_through_cycles(SMALL, job.linear.work, job.attention.work)
    rtl_busy = {s: res["counters"][s]["busy"] for s in ("qkv", "attention")}
    _check_prediction("run-through {} sequences rho {}".format(sequences, rho), seed,
                      res["counters"]["attention"]["cycles"], job.predicted_cycles,
                      rtl_busy, model.busy)


# ---- the model alone ---------------------------------------------------------------------------


def test_ideal_linear_macs():
    work = cycles.LinearWork(16, 12, ((3, 5), (0, 0), (8, 8)))
    assert cycles.ideal_linear_macs(work) == (8 + 0 + 16) * 12
    bitmap = [[1, 0, 1, 1, 0, 0, 0, 1], [0] * 8, [1] * 8]
    work = cycles.LinearWork.from_bitmap(bitmap, 20, 4)
    assert work.sent == ((3, 1), (0, 0), (4, 4))
    assert cycles.ideal_linear_macs(work) == 12 * 20


def test_ideal_attention_macs_counts_only_the_queries_of_a_partial_block():
    # 10 tokens in blocks of 4 lanes: 4, 4 and 2 queries; head_dim 8; QK^T and A V.
    work = cycles.AttentionWork(10, 2, 8, (((6, 6, 5), (3, 5, 4)),))
    head0 = 6 * 4 + 6 * 4 + 5 * 2           # 58 kept score entries
    head1 = 3 * 4 + 5 * 4 + 4 * 2           # 40
    assert cycles.ideal_attention_macs(work, 4) == 2 * 8 * (head0 + head1) == 1568
    two = cycles.AttentionWork(5, 1, 16, (((5, 1),), ((2, 3),)))   # blocks of 4 and 1
    assert cycles.ideal_attention_macs(two, 4) == 2 * 16 * ((5 * 4 + 1) + (2 * 4 + 3)) == 1024
    assert cycles.ideal_attention_macs(cycles.AttentionWork.uniform(10, 2, 8, 4, 10), 4) \
        == 2 * 8 * 2 * 10 * 10


@pytest.mark.parametrize("count", [-1, 17])
def test_from_counts_rejects_counts_outside_0_to_d_in(count):
    with pytest.raises(ValueError, match="a token sends 0 .. 16 elements"):
        cycles.LinearWork.from_counts([4, count], 16, 8, 4)


def test_from_counts_spreads_counts_evenly_over_the_words():
    work = cycles.LinearWork.from_counts([5, 0, 16, 7, 3], 16, 8, 4)
    assert work.sent == ((2, 1, 1, 1), (0, 0, 0, 0), (4, 4, 4, 4), (2, 2, 2, 1), (1, 1, 1, 0))
    assert (work.d_in, work.d_out, work.tokens, work.sent_elements) == (16, 8, 5, 31)
    assert cycles.LinearWork.dense(2, 16, 8, 8).sent == ((8, 8), (8, 8))


def test_attention_cycles_rejects_kept_with_the_wrong_number_of_blocks():
    # 10 tokens on 4 lanes: every head has 3 query blocks.
    for kept in ((((4, 4), (4, 4, 4)),),                      # a head with too few
                 (((4, 4, 4, 4), (4, 4, 4)),),                # a head with too many
                 (((4, 4, 4), (4, 4, 4)), ((4, 4, 4), (4, 4)))):  # in the second sequence
        with pytest.raises(ValueError, match="kept must give every head 3 query blocks"):
            cycles.attention_cycles(SMALL, cycles.AttentionWork(10, 2, 8, kept))


@pytest.mark.parametrize("cfg", [R2V4, CONFIGS["tiny"]], ids=lambda c: c.name)
def test_more_sent_elements_never_predict_fewer_cycles(cfg):
    seed = SEED + 101 + cfg.rows
    rng = random.Random(seed)
    e = cfg.bitmap_word
    for trial in range(6):
        words, tokens = rng.randint(1, 3), rng.randint(1, 6)
        d_out = cfg.lanes * rng.randint(1, 5)
        sent = [[rng.randint(0, e // 2) for _ in range(words)] for _ in range(tokens)]
        prev = None
        for step in range(25):
            work = cycles.LinearWork(words * e, d_out, tuple(map(tuple, sent)))
            now = cycles.linear_cycles(cfg, work).cycles
            assert prev is None or now >= prev, (seed, trial, step, sent, prev, now)
            prev = now
            t, w = rng.randrange(tokens), rng.randrange(words)
            sent[t][w] = min(e, sent[t][w] + 1)


@pytest.mark.parametrize("cfg", [SMALL, ONE_ROW], ids=lambda c: c.name)
def test_more_kept_columns_never_predict_fewer_cycles(cfg):
    seed = SEED + 201 + cfg.rows
    rng = random.Random(seed)
    for trial in range(6):
        n, heads, seqs = rng.randint(1, 14), rng.randint(1, 2), rng.randint(1, 3)
        blocks = -(-n // cfg.lanes)
        kept = [[[rng.randint(0, n // 2) for _ in range(blocks)] for _ in range(heads)]
                for _ in range(seqs)]
        prev = None
        for step in range(20):
            work = cycles.AttentionWork(n, heads, cfg.head_dim,
                                        tuple(tuple(map(tuple, s)) for s in kept))
            now = cycles.attention_cycles(cfg, work).cycles
            assert prev is None or now >= prev, (seed, trial, step, kept, prev, now)
            prev = now
            s, h, b = rng.randrange(seqs), rng.randrange(heads), rng.randrange(blocks)
            kept[s][h][b] = min(n, kept[s][h][b] + 1)


@pytest.mark.parametrize("cfg", [R2V4, CONFIGS["tiny"]], ids=lambda c: c.name)
def test_dense_linear_cycles_are_at_least_its_beats(cfg):
    # 4 tokens of 2 words, d_out = lanes x (2 rows + 1): ceil(d_out / (rows x lanes)) chunks.
    d_in, d_out = 2 * cfg.bitmap_word, cfg.lanes * (2 * cfg.rows + 1)
    chunks = 3                           # r2v4k2: ceil(20 / 8) = 3; tiny: 24 / 8 = 3
    res = cycles.linear_cycles(cfg, cycles.LinearWork.dense(4, d_in, d_out, cfg.bitmap_word))
    assert res.busy == {"linear": 4 * d_in * chunks}
    assert res.accumulations == {"linear": 4 * chunks}
    assert res.cycles >= res.array_busy


def test_tokens_that_send_nothing_still_take_a_beat_per_output_chunk():
    # r2v4k2: d_out 20 in chunks of rows x lanes = 8 channels -> 3 chunks a token.
    work = cycles.LinearWork(16, 20, ((0, 0),) * 5)
    res = cycles.linear_cycles(R2V4, work)
    assert res.busy == {"linear": 5 * 3}
    assert res.accumulations == {"linear": 5 * 3}
    mixed = cycles.LinearWork(16, 20, ((0, 0), (2, 1), (0, 0)))
    assert cycles.linear_cycles(R2V4, mixed).busy == {"linear": 3 * (1 + 3 + 1)}


# ---- the latency oracle ----------------------------------------------------------------------


def test_block_work_counts_what_the_sparsity_says():
    """A block of d = 64, 2 heads, 16 tokens (4 of them dense), qkv sending a quarter of its
    inputs, attention keeping half: the sent elements, the kept columns and the predictor."""
    cfg = R2V4.replace(max_d=64, max_heads=2, max_tokens=32)
    sp = cycles.BlockSparsity(16, {"qkv": 0.25}, dense_tokens=4, rho=0.5)
    work = cycles.block_work(cfg, sp, d=64, heads=2)
    assert work.qkv.sent_elements == 4 * 64 + 12 * 16
    assert work.proj.sent_elements == 16 * 64                # missing: dense
    assert work.fc2.d_in == 256 and work.fc2.d_out == 64
    assert work.attention.kept == (((8,) * 4,) * 2,)         # 16 tokens / 4 lanes a block
    assert work.predict
    dense = cycles.block_work(cfg, cycles.BlockSparsity(16), d=64, heads=2)
    assert not dense.predict and dense.attention.kept == (((16,) * 4,) * 2,)


@pytest.mark.parametrize("kwargs,what", [
    (dict(tokens=0), "tokens"), (dict(tokens=10, sequences=3), "tokens"),
    (dict(tokens=8, dense_tokens=9), "dense_tokens"), (dict(tokens=8, sent={"qk": 0.5}), "sent"),
    (dict(tokens=8, sent={"fc1": 1.5}), "sent"), (dict(tokens=8, rho=0), "rho")])
def test_block_sparsity_rejects_bad_values(kwargs, what):
    with pytest.raises(ValueError, match=what):
        cycles.BlockSparsity(**kwargs)


def test_model_cycles_sums_its_passes_and_sparsity_never_costs_cycles():
    """The oracle: a model's cycles are its blocks', embedding's and head's; a sparser block
    never predicts more cycles than a denser one; a split of the array into two never beats
    the one shared array on the same work."""
    cfg = R2V4.replace(max_d=64, max_heads=2, max_tokens=32)
    dense = cycles.BlockSparsity(16)
    sparse = cycles.BlockSparsity(16, {"qkv": 0.5, "proj": 0.5, "fc1": 0.5, "fc2": 0.25},
                                  dense_tokens=4, rho=0.5)
    res = cycles.model_cycles(cfg, [dense, sparse], d=64, heads=2, embed_in=32, classes=4)
    assert res["cycles"] == sum(b.cycles for b in res["blocks"]) + res["embed"] + res["head"]
    assert res["embed"] > 0 and res["head"] > 0
    assert res["blocks"][1].cycles < res["blocks"][0].cycles
    assert res["busy"] <= res["cycles"]
    split = cycles.model_cycles(cfg.replace(rows=2), [sparse], d=64, heads=2, split=(1, 1))
    shared = cycles.model_cycles(cfg.replace(rows=2), [sparse], d=64, heads=2)
    assert split["cycles"] >= shared["cycles"]


@pytest.mark.parametrize("sequences,rho,skip", [(1, 0.5, 2), (2, 1.0, 1)])
def test_block_cycles_match_the_rtl(small_block, sequences, rho, skip):
    """A whole block (six clients, the on-chip predictor, LayerNorm, transpose, skip paths) of
    a small model on 2 x 4 PEs: one sequence with sparse attention, two back to back with dense
    attention through a one-sequence skip FIFO."""
    blk, xs = small_block
    job = block_job(SMALL, blk, xs[:sequences], BLOCK_MODEL.n_s, tau=2, rho=rho)
    res = run_amaranth(Block(SMALL, attention_skip=skip), job.plan(), seed=BLOCK_SEED,
                       stall=0.0)
    work = dataclasses.replace(job.work, attention_skip=skip)
    model = cycles.block_cycles(SMALL, work)
    measured = res["counters"]["res2"]["cycles"]
    clients = ("qkv", "proj", "fc1", "fc2", "predict", "attention")
    _check_prediction("block x{} rho={}".format(sequences, rho), BLOCK_SEED, measured,
                      model.cycles, {c: res["counters"][c]["busy"] for c in clients},
                      {c: model.busy[c] for c in clients})
