"""Linear engine under Amaranth's simulator: delta projections bit-exact with the golden model."""

import random

import pytest
import torch

from golden import contract
from golden.intvidt import QLinear
from hw.config import preset
from hw.linear_engine import REGISTERS
from hw.run_through import LinearTop
from sim.driver import Plan, run_amaranth
from sim.linear_job import job_from_layer
from sim.scoreboard import check_equal
from sim.stimulus import random_layer, random_tokens

SEED = 515

CONFIGS = {
    "tiny": preset("tiny"),
    "r2v4k2": preset("tiny").replace(rows=2, lanes=4, requant_lanes=4, bitmap_word=8,
                                     max_d=32, max_tokens=32, weight_depth=512,
                                     max_positions=8, name="r2v4k2"),
}


def run_job(job, seed, stall=0.3, timeout=200_000, *, tokens=None, check=True):
    """Run ``job`` on a fresh engine; the driver's result (checked unless ``check`` is
    false)."""
    return run_amaranth(LinearTop(job.config), job.plan(tokens=tokens, timeout=timeout),
                        seed=seed, stall=stall, check=check)


def _status(res):
    return REGISTERS.status(res["status"]["linear"])


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("tau,delta,stall", [(2, True, 0.3), (0, True, 0.0), (2, False, 0.0)])
def test_engine_matches_golden(name, tau, delta, stall):
    cfg = CONFIGS[name]
    seed = SEED + 7 * tau + 13 * delta + len(name)
    rng = random.Random(seed)
    d_in = 2 * cfg.bitmap_word
    d_out = cfg.lanes * (2 * cfg.rows + 1)                   # a partial last chunk if rows > 1
    layer = random_layer(rng, d_out, d_in, contract.RESID if tau == 0 else contract.ACT)
    x, frame, spatial = random_tokens(rng, n_t=3, n_s=3, d_in=d_in)
    job = job_from_layer(cfg, layer, x, frame, spatial, 3, tau=tau, delta_enable=delta)
    res = run_job(job, seed, stall)
    counters = res["counters"]["linear"]
    assert counters["busy"] <= counters["cycles"], counters


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_few_values_in_the_first_of_many_words(stall):
    """A delta token whose only sent values sit in its first word, followed by three words
    with none: the values wait in the encoder's packer until the token ends, while the bitmap
    decoder holds two words and takes no more until it has them (a deadlock before the
    encoder's bitmap FIFO)."""
    cfg = CONFIGS["r2v4k2"]
    seed = SEED + 101
    rng = random.Random(seed)
    d_in = 4 * cfg.bitmap_word
    layer = random_layer(rng, 2 * cfg.lanes * cfg.rows, d_in)
    x0 = torch.tensor([[rng.randint(-100, 100) for _ in range(d_in)] for _ in range(2)])
    x1 = x0.clone()
    x1[0, :3] += 40                   # three sent values (fewer than decode_width allows)
    x1[1, 1] -= 40                    # one sent value
    x = torch.cat([x0, x1, x1])       # and a token that sends nothing at all
    frame, spatial = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    job = job_from_layer(cfg, layer, x, frame, spatial, 2, tau=4)
    run_job(job, seed, stall, timeout=2_000)


# ---- malformed configuration and input: error flags, never a hang -------------------------

def _small_job(seed, *, d_in_words=2, n_t=2, n_s=2, tau=2, layer=None):
    cfg = CONFIGS["r2v4k2"]
    rng = random.Random(seed)
    d_in = d_in_words * cfg.bitmap_word
    layer = layer or random_layer(rng, cfg.lanes * cfg.rows, d_in)
    x, frame, spatial = random_tokens(rng, n_t=n_t, n_s=n_s, d_in=d_in, change=0.5)
    return job_from_layer(cfg, layer, x, frame, spatial, n_s, tau=tau)


def _token_slices(job):
    """(first, last) beat index of each token of ``job.tokens``."""
    spans, first = [], 0
    for n, beat in enumerate(job.tokens):
        if beat["last"]:
            spans.append((first, n))
            first = n + 1
    return spans


def _start_with(cfg, writes):
    """Write ``writes``, pulse START; the status after it (and after CLEAR_ERROR), and
    whether the input stream was ready while refused."""
    plan = Plan(name="refused start", setup=[("write", "linear", r, v) for r, v in writes] + [
        ("start", "linear", False), ("status", "linear", "after_start"), ("ready", "i", "i_ready"),
        ("pulse", "linear", ("clear_error",)), ("status", "linear", "after_clear")])
    return run_amaranth(LinearTop(cfg), plan, seed=0, stall=0)["seen"]


@pytest.mark.parametrize("reg,value", [
    ("d_in", 0), ("d_in", 12), ("d_in", 1 << 20), ("d_out", 0), ("d_out", 6),
    ("d_out", 1 << 20)])
def test_bad_shape_raises_config_error_and_does_not_start(reg, value):
    seen = _start_with(CONFIGS["r2v4k2"],
                       [("d_in", 16), ("d_out", 8), ("tokens", 1), (reg, value)])
    status = REGISTERS.status(seen["after_start"])
    assert status.errors.config and status.error, REGISTERS.describe(seen["after_start"])
    assert not status.running and not status.done, REGISTERS.describe(seen["after_start"])
    assert not seen["i_ready"], "a refused run must not take tokens"
    assert seen["after_clear"] == 0, hex(seen["after_clear"])


def test_weights_too_large_for_the_buffer_raise_config_error():
    cfg = CONFIGS["r2v4k2"]
    # chunks * d_in weight words per row must fit weight_depth / rows.
    d_out = cfg.max_reduction // cfg.lanes * cfg.lanes
    chunks = -(-d_out // (cfg.rows * cfg.lanes))
    assert chunks * cfg.max_reduction > cfg.weight_depth // cfg.rows
    seen = _start_with(cfg, [("d_in", cfg.max_reduction), ("d_out", d_out), ("tokens", 1)])
    status = REGISTERS.status(seen["after_start"])
    assert status.errors.config and not status.running, REGISTERS.describe(seen["after_start"])


@pytest.mark.parametrize("kind", ["short", "long"])
def test_wrong_token_length_raises_token_error_and_resynchronises(kind):
    """A token one beat short (``last`` early) or one beat long (no ``last`` on beat
    ``d_in / bitmap_word``): the ``token`` error, the run still finishes with one output token per input
    token, and the tokens at other positions stay bit-exact."""
    seed = SEED + (201 if kind == "short" else 202)
    job = _small_job(seed)
    spans = _token_slices(job)
    beats = [dict(b) for b in job.tokens]
    bad = 2                                    # frame 1, position 0
    first, last = spans[bad]
    if kind == "short":
        del beats[last]
        beats[last - 1]["last"] = 1
    else:
        extra = dict(beats[last])
        beats[last]["last"] = 0
        beats.insert(last + 1, extra)
    per_tok = len(job.expected) // job.n_tokens
    good = [t for t in range(job.n_tokens) if t != bad]
    res = run_job(job, seed, 0.3, timeout=5_000, tokens=beats, check=False)
    out = res["outputs"]["o"]
    assert len(out) == len(job.expected)
    for t in good:
        check_equal(out[t * per_tok:(t + 1) * per_tok],
                    job.expected[t * per_tok:(t + 1) * per_tok],
                    what="token {} after a {} token".format(t, kind), seed=seed)
    assert _status(res).errors.token and _status(res).done, res["status"]
    assert res["counters"]["linear"]["tokens_out"] == job.n_tokens


def test_accumulator_overflow_raises_overflow_error():
    """y = bias + acc beyond the accumulator format: the ``overflow`` error, and the run finishes."""
    cfg = CONFIGS["r2v4k2"]
    seed = SEED + 301
    d_in, d_out = 2 * cfg.bitmap_word, cfg.lanes * cfg.rows
    top = (1 << (cfg.acc_format.bits - 1)) - 1
    layer = QLinear(torch.full((d_out, d_in), 127), torch.full((d_out,), top),
                    torch.full((d_out,), 1 << 14), torch.full((d_out,), 24), contract.ACT)
    job = job_from_layer(cfg, layer, torch.full((1, d_in), 100), torch.tensor([0]),
                         torch.tensor([0]), 1, tau=2)
    res = run_job(job, seed, 0.0, timeout=5_000, check=False)
    assert len(res["outputs"]["o"]) == len(job.expected), "the token's rows still leave"
    assert _status(res).errors.overflow and _status(res).done, res["status"]


def test_a_start_before_the_weights_are_loaded_is_refused_then_a_loaded_run_is_exact():
    """START after reset_load but before the weights (or the channel constants) are loaded:
    errors ``load`` and ``config``, no token taken; the same hardware then loads and runs
    bit-exact."""
    from sim.driver import run_amaranth_plans
    job = _small_job(SEED + 301)
    for missing in ("w_load", "c_load"):
        steps = [s for s in job.setup("linear") if not (s[0] == "load" and s[1].endswith(missing))]
        refused = Plan(name="unloaded", setup=steps + [
            ("start", "linear", False), ("status", "linear", "after_start"),
            ("ready", "i", "i_ready"), ("pulse", "linear", ("clear_error",))])
        res, _ = run_amaranth_plans(LinearTop(job.config), [refused, job.plan()], seed=SEED)
        st = REGISTERS.status(res["seen"]["after_start"])
        assert st.errors.load and st.errors.config and not st.running, \
            (missing, REGISTERS.describe(res["seen"]["after_start"]))
        assert not res["seen"]["i_ready"], "a refused run must not take tokens"


def test_layers_hold_their_own_weights_and_a_bad_layer_is_refused():
    """Two layers' weights and constants on one engine (``max_layers`` 2): each run uses its
    ``layer`` setting's part, loading layer 1 leaves layer 0 intact (run again without a
    load), a START on an unloaded layer raises ``load``, ``layer`` = ``max_layers`` raises
    ``config``; the next good run is exact."""
    from sim.driver import run_amaranth_plans
    cfg = CONFIGS["r2v4k2"].replace(max_layers=2, name="r2v4k2_l2")
    rng = random.Random(SEED + 411)
    d_in = 2 * cfg.bitmap_word
    x, frame, spatial = random_tokens(rng, n_t=2, n_s=2, d_in=d_in, change=0.5)
    jobs = [job_from_layer(cfg, random_layer(rng, cfg.lanes * cfg.rows, d_in), x, frame,
                           spatial, 2, tau=2, block=b, name=f"layer{b}") for b in (0, 1)]
    assert not torch.equal(jobs[0].outputs, jobs[1].outputs)

    def refused(layer, what):
        return Plan(name=what, setup=[("write", "linear", r, v) for r, v in jobs[1].registers] + [
            ("pulse", "linear", ("clear_error",)), ("write", "linear", "layer", layer),
            ("start", "linear", False), ("status", "linear", what), ("ready", "i", what + "_i"),
            ("pulse", "linear", ("clear_error",))])
    plans = [refused(1, "unloaded"), jobs[0].plan(), jobs[1].plan(), jobs[0].plan(load=False),
             refused(2, "bad_layer"), jobs[1].plan(load=False)]
    results = run_amaranth_plans(LinearTop(cfg), plans, seed=SEED, stall=0.2)
    for k, what, error in ((0, "unloaded", "load"), (4, "bad_layer", "config")):
        seen = results[k]["seen"]
        st = REGISTERS.status(seen[what])
        assert st.errors[error] and not st.running, (what, REGISTERS.describe(seen[what]))
        assert not seen[what + "_i"], "a refused run must not take tokens"


def test_a_sized_dense_only_engine_refuses_delta_and_wider_layers_then_runs_dense_exact():
    """An engine built for the embedding or the classifier (``max_out`` its layer's width,
    ``delta=False``: no delta references): a delta run and a run wider than ``max_out`` are
    refused (``config``, no token taken); the same hardware then runs its dense layer
    bit-exact."""
    from hw.linear_engine import LinearEngine
    from hw.pipeline import Pipeline
    from sim.driver import run_amaranth_plans
    cfg = CONFIGS["r2v4k2"]
    rng = random.Random(SEED + 503)
    d_in, d_out = 2 * cfg.bitmap_word, cfg.lanes * (2 * cfg.rows + 1)
    x, frame, spatial = random_tokens(rng, n_t=2, n_s=3, d_in=d_in)
    layer = random_layer(rng, d_out, d_in)
    wide = random_layer(rng, d_out + cfg.lanes, d_in)
    dense = job_from_layer(cfg, layer, x, frame, spatial, 3, tau=2, delta_enable=False)
    delta = job_from_layer(cfg, layer, x, frame, spatial, 3, tau=2, delta_enable=True)
    wider = job_from_layer(cfg, wide, x, frame, spatial, 3, tau=2, delta_enable=False)

    def refused(job, what):
        return Plan(name=what, setup=job.setup("linear") + [
            ("start", "linear", False), ("status", "linear", what), ("ready", "i", what + "_i"),
            ("pulse", "linear", ("clear_error",))])
    top = Pipeline(cfg, [("linear", LinearEngine(cfg, max_out=d_out, delta=False))])
    res = run_amaranth_plans(top, [refused(delta, "delta"), refused(wider, "wider"),
                                   dense.plan()], seed=SEED, stall=0.2,
                             check=[False, False, True])
    for k, what in enumerate(("delta", "wider")):
        seen = res[k]["seen"]
        st = REGISTERS.status(seen[what])
        assert st.errors.config and not st.running, (what, REGISTERS.describe(seen[what]))
        assert not seen[what + "_i"], "a refused run must not take tokens"


@pytest.mark.parametrize("max_out", [0, 6, 4096, True, 8.0])
def test_max_out_is_checked(max_out):
    from hw.linear_engine import LinearEngine
    with pytest.raises(ValueError, match="max_out must be a multiple of 4 in 4 .. "):
        LinearEngine(CONFIGS["r2v4k2"], max_out=max_out)


@pytest.mark.parametrize("max_in", [0, 4, 4096, False])
def test_max_in_is_checked(max_in):
    from hw.linear_engine import LinearEngine
    cfg = CONFIGS["r2v4k2"]
    with pytest.raises(ValueError, match="max_in must be a multiple of {} in ".format(
            cfg.bitmap_word)):
        LinearEngine(cfg, max_in=max_in)


def test_sized_engine_memories_and_limits():
    """max_in and max_out size the weights (chunks x max_in words a row), the encoder's
    references (positions x max_in) and y_ref; a dense-only engine has no references at all;
    a START wider than max_in is refused."""
    from hw.linear_engine import LinearEngine
    from hw.memories import memory_inventory
    from hw.pipeline import Pipeline
    from sim.driver import run_amaranth_plans
    cfg = CONFIGS["r2v4k2"]
    e, R, V = cfg.bitmap_word, cfg.rows, cfg.lanes
    d_in, d_out = 2 * e, 3 * R * V
    top = Pipeline(cfg, [("linear", LinearEngine(cfg, max_in=d_in, max_out=d_out))])
    inv = {p: (w, d) for p, w, d in memory_inventory(top, cfg)}
    assert inv["linear.weights_0"][1] == 3 * d_in, inv           # 3 chunks of d_in words
    assert inv["linear.encoder.refs"] == (8 * e, cfg.max_positions * 2), inv
    assert inv["linear.y_ref"][1] == cfg.max_positions * d_out // V, inv
    dense = Pipeline(cfg, [("linear", LinearEngine(cfg, max_in=d_in, delta=False))])
    names = [p for p, _, _ in memory_inventory(dense, cfg)]
    assert not [p for p in names if "refs" in p or "y_ref" in p], names
    rng = random.Random(SEED)
    x, frame, spatial = random_tokens(rng, n_t=2, n_s=2, d_in=d_in + e)
    wide = job_from_layer(cfg, random_layer(rng, V, d_in + e), x, frame, spatial, 2, tau=1,
                          delta_enable=False)
    plan = Plan(name="wide", setup=wide.setup("linear") + [
        ("start", "linear", False), ("status", "linear", "wide"), ("ready", "i", "wide_i"),
        ("pulse", "linear", ("clear_error",))])
    top = Pipeline(cfg, [("linear", LinearEngine(cfg, max_in=d_in, max_out=d_out))])
    seen = run_amaranth_plans(top, [plan], seed=SEED, check=[False])[0]["seen"]
    st = REGISTERS.status(seen["wide"])
    assert st.errors.config and not st.running, REGISTERS.describe(seen["wide"])
    assert not seen["wide_i"], "a refused run must not take tokens"
