"""A whole VidT block on one PE array under Amaranth's simulator, bit-exact with the integer
golden model (:meth:`golden.intvidt.IntBlock.forward` under a sparse execution), and the
pieces that join its stages (skip paths, result reservation, the token adapter)."""

import random

import pytest
import torch

from golden import contract
from golden.intvidt import quantize_vidt
from golden.vidt import VidT, VidTConfig
from hw.block import BLOCK_STAGES, Block
from hw.delta_encoder import token_layout
from hw.framer import Framer
from hw.pipeline import Pipeline
from hw.to_tokens import ToTokens
from sim.block_job import block_job
from sim.driver import Plan, run_amaranth, run_amaranth_plans
from tests.test_attention_engine import SMALL

SEED = 9091
#: A block-shaped model small enough for the simulator: d = 16 (2 heads of 8), MLP 64,
#: 4 positions per frame, 3 frames -> 12 tokens (3 query blocks of 4).
MODEL = VidTConfig(frames=6, height=16, width=16, tubelet=2, patch=8, dim=16, heads=2,
                   depth=1, mlp_ratio=4, num_classes=4)


@pytest.fixture(scope="module")
def small_block():
    """A seeded untrained model, quantised on random clips, and the RESID tokens of further
    clips: ``(IntBlock, [x ...])``. (Several blocks, STA and the whole model:
    ``tests/test_model.py``.)"""
    torch.manual_seed(SEED)
    model = VidT(MODEL).eval()
    g = torch.Generator().manual_seed(SEED)
    videos = torch.randint(0, 256, (7, 1, MODEL.frames, MODEL.height, MODEL.width),
                           generator=g, dtype=torch.uint8)
    q = quantize_vidt(model, videos[:4])
    return q.blocks[0], [q.tokens(videos[k:k + 1])[0] for k in range(4, 7)]


def test_block_is_bit_exact_with_the_golden_block(small_block):
    """One clip through LN1 ... res2 with delta projections (tau = 2) and sub-vector attention
    (rho = 0.5, masks from the on-chip predictor), random stalls; block_job checks its
    expectation against IntBlock.forward."""
    blk, xs = small_block
    job = block_job(SMALL, blk, xs[:1], MODEL.n_s, tau=2, rho=0.5)
    res = run_amaranth(Block(SMALL), job.plan(), seed=SEED, stall=0.2)
    # The six PE clients shared the one array: their beats fit in the block's cycles.
    busy = sum(res["counters"][s]["busy"]
               for s in ("qkv", "predict", "attention", "proj", "fc1", "fc2"))
    assert res["counters"]["predict"]["busy"] > 0
    assert busy <= res["counters"]["res2"]["cycles"], res["counters"]


def test_sequences_back_to_back_with_a_one_sequence_skip_fifo(small_block):
    """Two sequences (frames numbered on, so the second is a delta against the first) with
    dense attention: a skip FIFO of one sequence is enough not to deadlock (the default of
    two runs in the other tests)."""
    blk, xs = small_block
    job = block_job(SMALL, blk, xs[1:3], MODEL.n_s, tau=3, rho=1.0)
    run_amaranth(Block(SMALL, attention_skip=1), job.plan(), seed=SEED + 1, stall=0.1)


def test_a_malformed_token_is_flagged_and_the_next_run_is_exact(small_block):
    """A token whose last beat comes one beat early: the framer flags ``token`` and pads it
    (the residual's skip path stays aligned), every stage finishes; then, on the same
    hardware, a good run is bit-exact."""
    blk, xs = small_block
    bad = block_job(SMALL, blk, xs[:1], MODEL.n_s, tau=2, rho=0.5)
    beats = [dict(b) for b in bad.inputs[0][1]]
    beats[2]["last"] = True                         # token 0 ends after 3 of its 4 beats
    del beats[3]
    plan = bad.plan()
    plan.inputs = [("i", beats)]
    plan.done = []
    good = block_job(SMALL, blk, xs[1:2], MODEL.n_s, tau=2, rho=0.5)
    res, _ = run_amaranth_plans(Block(SMALL), [plan, good.plan()], seed=SEED + 2, stall=0.1,
                                check=[False, True])
    regs = Framer.registers
    st = regs.status(res["status"]["frame"])
    assert st.done and st.errors.token, regs.describe(st.as_value())
    assert len(res["outputs"]["o"]) == len(bad.expected)


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_block_arguments_are_checked():
    with pytest.raises(ValueError, match="attention_skip must be a positive integer"):
        Block(SMALL, attention_skip=0)
    blk = Block(SMALL)
    assert len(blk.windows) == len(BLOCK_STAGES)
    # The predictor's masks are joined inside: neither end is a port of the block.
    assert "attention" not in blk.signature.members and "predict" not in blk.signature.members


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
@pytest.mark.parametrize("link", [("predict", "masks", "nowhere", "masks"),
                                  ("attention", "masks", "predict", "masks"),
                                  ("predict", "masks", "attention", "i"),
                                  ("predict", "masks")])
def test_pipeline_links_are_checked(link):
    """A link must join an ``Out`` port to an ``In`` port of the same stream signature."""
    from hw.attention_engine import AttentionEngine
    from hw.predictor import Predictor
    with pytest.raises(ValueError, match="link"):
        Pipeline(SMALL, [("predict", Predictor(SMALL)), ("attention", AttentionEngine(SMALL))],
                 links=[link])


# --- The token adapter ----------------------------------------------------------------------

def _adapter_plan(beats, want, *, positions, tokens, done=True):
    return Plan("to_tokens", setup=[("write", "t", "positions", positions),
                                    ("write", "t", "tokens", tokens), ("start", "t", True)],
                inputs=[("i", beats)], outputs=[("o", want)],
                counters={"t": {"tokens_out": tokens}}, done=["t"] if done else [],
                timeout=2_000)


def test_adapter_gathers_beats_and_numbers_positions():
    rng = random.Random(SEED)
    V, E = SMALL.lanes, SMALL.bitmap_word
    d, n_s, n = 16, 3, 7
    rows = [[rng.randint(contract.ACT.min, contract.ACT.max) for _ in range(d)]
            for _ in range(n)]
    beats = [{"data": r[s:s + V], "last": s + V == d} for r in rows for s in range(0, d, V)]
    want = [{"data": r[s:s + E], "position": t % n_s, "last": int(s + E == d)}
            for t, r in enumerate(rows) for s in range(0, d, E)]
    top = Pipeline(SMALL, [("t", ToTokens(SMALL))])
    assert top.signature.members["o"].signature.members["payload"].shape == token_layout(SMALL)
    for stall in (0.0, 0.4):
        run_amaranth(top, _adapter_plan(beats, want, positions=n_s, tokens=n), seed=SEED,
                     stall=stall)


def test_adapter_flags_range_and_frame_errors_then_runs_clean():
    V = SMALL.lanes
    beats = [{"data": [300, -300, 5, -5], "last": 0}, {"data": [1, 2, 3, 4], "last": 1},
             {"data": [9, 9, 9, 9], "last": 1}]                 # last after half a token beat
    want = [{"data": [127, -128, 5, -5, 1, 2, 3, 4], "position": 0, "last": 1},
            {"data": [9, 9, 9, 9, 0, 0, 0, 0], "position": 1, "last": 1}]
    top = Pipeline(SMALL, [("t", ToTokens(SMALL))])
    res = run_amaranth(top, _adapter_plan(beats, want, positions=4, tokens=2, done=False),
                       seed=SEED)
    regs = ToTokens.registers
    st = regs.status(res["status"]["t"])
    assert st.done and st.errors.range and st.errors.frame, regs.describe(st.as_value())
    clean = [{"data": [1] * V, "last": 0}, {"data": [2] * V, "last": 1}]
    plan = _adapter_plan(clean, [{"data": [1] * V + [2] * V, "position": 0, "last": 1}],
                         positions=4, tokens=1)
    plan.setup = [("pulse", "t", ("clear_error",))] + plan.setup
    run_amaranth(top, plan, seed=SEED)


def test_adapter_takes_listed_positions_and_checks_the_list():
    """A ragged token set (as STA leaves it): token t has entry t of the loaded list, the
    list survives runs; a list entry past max_positions raises ``range`` and position 0 is
    used; a run of more tokens than the list holds is refused (``config``); the next run is
    exact. (``max_positions`` 6: an entry of the 3-bit list can lie past it.)"""
    rng = random.Random(SEED + 3)
    cfg = SMALL.replace(max_positions=6, name="small_p6")
    V, E = cfg.lanes, cfg.bitmap_word
    d = E
    listed = [0, 2, 3, 1, 3, 0]
    rows = [[rng.randint(-100, 100) for _ in range(d)] for _ in listed]
    beats = [{"data": r[s:s + V], "last": s + V == d} for r in rows for s in range(0, d, V)]

    def plan(positions, n, *, load, want_pos=None):
        want = [{"data": r, "position": p, "last": 1}
                for r, p in zip(rows[:n], want_pos or positions)]
        setup = ([("pulse", "t", ("reset_load", "clear_error")),
                  ("load", "t.pos_load", [{"position": p} for p in positions])] if load else [])
        return Plan("listed", setup=setup + [
            ("write", "t", "positions", 1), ("write", "t", "listed", 1),
            ("write", "t", "tokens", n), ("start", "t", True)],
            inputs=[("i", beats[:n * (d // V)])], outputs=[("o", want)],
            counters={"t": {"tokens_out": n}}, done=["t"], timeout=2_000)
    top = Pipeline(cfg, [("t", ToTokens(cfg))])
    bad_entry = listed[:2] + [cfg.max_positions] + listed[3:]
    bad = plan(bad_entry, 4, load=True, want_pos=listed[:2] + [0] + listed[3:4])
    too_many = Plan("too many", setup=[("write", "t", "tokens", len(listed) + 1),
                                       ("start", "t", False), ("status", "t", "refused"),
                                       ("pulse", "t", ("clear_error",))])
    res = run_amaranth_plans(top, [plan(listed, 6, load=True), plan(listed, 3, load=False),
                                   bad, too_many, plan(listed, 6, load=True)],
                             seed=SEED, stall=0.3, check=[True, True, False, False, True])
    regs = ToTokens.registers
    st = regs.status(res[2]["status"]["t"])
    assert st.errors.range and st.done, regs.describe(res[2]["status"]["t"])
    assert res[2]["outputs"]["o"] == bad.outputs[0][1]
    assert regs.status(res[3]["seen"]["refused"]).errors.config


@pytest.mark.parametrize("positions,tokens", [(0, 1), (SMALL.max_positions + 1, 1), (4, 0)])
def test_adapter_refuses_bad_settings(positions, tokens):
    top = Pipeline(SMALL, [("t", ToTokens(SMALL))])
    p = Plan("bad", setup=[("write", "t", "positions", positions),
                           ("write", "t", "tokens", tokens), ("start", "t", False),
                           ("status", "t", "after")])
    res = run_amaranth(top, p, seed=SEED)
    assert ToTokens.registers.status(res["seen"]["after"]).errors.config


# --- The framer -----------------------------------------------------------------------------

def test_framer_pads_short_and_cuts_long_tokens_then_runs_clean():
    V = SMALL.lanes
    top = Pipeline(SMALL, [("f", Framer(SMALL))])
    a, b, c = ([k] * V for k in (1, 2, 3))
    short = [{"data": a, "last": 1}]                                  # 1 of 3 beats
    long_ = [{"data": a, "last": 0}, {"data": b, "last": 0}, {"data": c, "last": 0},
             {"data": [9] * V, "last": 0}, {"data": [9] * V, "last": 1}]   # 5 beats
    good = [{"data": c, "last": 0}, {"data": b, "last": 0}, {"data": a, "last": 1}]
    zero = [0] * V
    want_bad = [{"data": a, "last": 0}, {"data": zero, "last": 0}, {"data": zero, "last": 1},
                {"data": a, "last": 0}, {"data": b, "last": 0}, {"data": c, "last": 1}]

    def plan(beats, want, tokens):
        return Plan("framer", setup=[("pulse", "f", ("clear_error",)),
                                     ("write", "f", "d", 3 * V), ("write", "f", "tokens", tokens),
                                     ("start", "f", True)],
                    inputs=[("i", beats)], outputs=[("o", want)],
                    counters={"f": {"tokens_out": tokens}}, done=[], timeout=2_000)

    bad, clean = plan(short + long_, want_bad, 2), plan(good, good, 1)
    clean.done = ["f"]
    res, _ = run_amaranth_plans(top, [bad, clean], seed=SEED, stall=0.3)
    st = Framer.registers.status(res["status"]["f"])
    assert st.done and st.errors.token, Framer.registers.describe(st.as_value())
