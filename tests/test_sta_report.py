"""STA report stages under Amaranth's simulator: the head sums of K and ``sum |x|`` of every
token, exact against the golden STA metric's own inputs, the streams passed through unchanged."""

import random

import pytest
import torch

from golden import contract, sta
from hw.config import preset
from hw.pipeline import Pipeline
from hw.sta_report import ACT_REGISTERS, KEY_REGISTERS, ActReport, KeyReport
from sim.driver import Plan, run_amaranth, run_amaranth_plans

SEED = 4242
CFG = preset("tiny").replace(lanes=4, requant_lanes=1, max_d=16, max_heads=4, name="sta16")
V = CFG.lanes


def beats_of(rows, lanes=V):
    return [{"data": [int(v) for v in row[s:s + lanes]], "last": s + lanes == len(row)}
            for row in rows for s in range(0, len(row), lanes)]


def key_plan(qkv, heads, head_dim, *, report=True, inputs=None, name="keys"):
    """``qkv`` ``[N, 3 * heads * head_dim]`` int8 tokens; the expected ``keys`` beats are the
    golden metric's head sums."""
    n = qkv.shape[0]
    k = qkv[:, heads * head_dim:2 * heads * head_dim].reshape(n, heads, head_dim)
    sums = k.sum(1)
    # The host's metric from the report equals the golden metric from the keys themselves.
    assert torch.equal(sta.key_metric_from_sum(sums[None], heads),
                       sta.key_metric(k.permute(1, 0, 2)[None]))
    outputs = [("o", beats_of(qkv.tolist()))]
    if report:
        outputs.append(("key.keys", beats_of(sums.tolist())))
    return Plan(name, setup=[
        ("pulse", "key", ("clear_error",)), ("write", "key", "tokens", n),
        ("write", "key", "heads", heads), ("write", "key", "head_dim", head_dim),
        ("write", "key", "report", int(report)), ("start", "key", True)],
        inputs=[("i", beats_of(qkv.tolist()) if inputs is None else inputs)],
        outputs=outputs,
        counters={"key": {"tokens_out": n, "reported": len(outputs[-1][1]) if report else 0}},
        done=["key"], timeout=5_000)


def random_qkv(rng, n, heads, head_dim, lo=-128, hi=127):
    return torch.tensor([[rng.randint(lo, hi) for _ in range(3 * heads * head_dim)]
                         for _ in range(n)])


@pytest.mark.parametrize("heads,head_dim", [(1, 4), (2, 8), (4, 4), (1, 16)])
def test_key_sums_are_exact(heads, head_dim):
    """Random tokens, the int8 extremes in every head (the largest sums of both signs), and
    keys that cancel to zero (the metric's zero vector); random stalls on every stream."""
    rng = random.Random(SEED + heads * 16 + head_dim)
    qkv = random_qkv(rng, 5, heads, head_dim)
    extremes = torch.stack([torch.full((3 * heads * head_dim,), v) for v in (-128, 127)])
    cancel = random_qkv(rng, 1, heads, head_dim)
    if heads % 2 == 0:
        k = cancel[0, heads * head_dim:2 * heads * head_dim].reshape(heads, head_dim)
        k[heads // 2:] = -k[:heads // 2]
    qkv = torch.cat([qkv, extremes, cancel])
    run_amaranth(Pipeline(CFG, [("key", KeyReport(CFG))]), key_plan(qkv, heads, head_dim),
                 seed=SEED, stall=0.3)


def test_no_report_passes_through_and_emits_nothing():
    rng = random.Random(SEED + 1)
    qkv = random_qkv(rng, 4, 2, 8)
    res = run_amaranth(Pipeline(CFG, [("key", KeyReport(CFG))]),
                       key_plan(qkv, 2, 8, report=False), seed=SEED, stall=0.2)
    assert res["counters"]["key"]["reported"] == 0


def test_a_short_qkv_token_is_flagged_and_the_next_run_is_exact():
    """A token one beat short (its last V beat missing): ``token`` is raised, the counters
    resynchronise on ``last``, so its K sums and the next tokens' are right; after
    ``clear_error`` a new run is exact and clean."""
    rng = random.Random(SEED + 2)
    heads, head_dim = 2, 4
    qkv = random_qkv(rng, 3, heads, head_dim)
    beats = beats_of(qkv.tolist())
    per = 3 * heads * head_dim // V
    short = beats[:per - 1]
    short[-1] = dict(short[-1], last=True)
    bad = key_plan(qkv, heads, head_dim, inputs=short + beats[per:])
    want = dict(bad.outputs, o=short + beats[per:])
    bad.outputs = list(want.items())
    good = key_plan(random_qkv(rng, 2, heads, head_dim), heads, head_dim)
    res = run_amaranth_plans(Pipeline(CFG, [("key", KeyReport(CFG))]), [bad, good],
                             seed=SEED, stall=0.2, check=[False, True])
    st = KEY_REGISTERS.status(res[0]["status"]["key"])
    assert st.errors.token and st.done, KEY_REGISTERS.describe(st.as_value())
    for port, beats_want in want.items():
        assert res[0]["outputs"][port] == beats_want, port


@pytest.mark.parametrize("writes", [
    {"heads": 0}, {"heads": 5}, {"head_dim": 2}, {"head_dim": 6}, {"heads": 2, "head_dim": 16},
    {"tokens": 0}])
def test_bad_key_settings_refuse_to_start(writes):
    settings = {"tokens": 1, "heads": 2, "head_dim": 8, **writes}
    plan = Plan("bad", setup=[("write", "key", r, v) for r, v in settings.items()] + [
        ("start", "key", False), ("status", "key", "after"), ("ready", "i", "ready")])
    seen = run_amaranth(Pipeline(CFG, [("key", KeyReport(CFG))]), plan, seed=0, stall=0)["seen"]
    st = KEY_REGISTERS.status(seen["after"])
    assert st.errors.config and not st.running and not seen["ready"]


def act_plan(x, *, report=True, name="act"):
    n = x.shape[0]
    act = sta.activation(x[None])[0]
    outputs = [("o", beats_of(x.tolist()))]
    if report:
        outputs.append(("act.act", [{"sum": int(a)} for a in act]))
    return Plan(name, setup=[
        ("write", "act", "tokens", n), ("write", "act", "report", int(report)),
        ("start", "act", True)],
        inputs=[("i", beats_of(x.tolist()))], outputs=outputs,
        counters={"act": {"tokens_out": n, "reported": n if report else 0}}, done=["act"],
        timeout=5_000)


def test_activation_sums_are_exact():
    """Random RESID tokens, the RESID extremes (the largest sum: d x 32768 fits the report
    format exactly), zeros; then a run with the report off on the same hardware."""
    rng = random.Random(SEED + 3)
    R = contract.RESID
    d = CFG.max_d
    x = torch.tensor([[rng.randint(R.min, R.max) for _ in range(d)] for _ in range(4)]
                     + [[R.min] * d, [R.max] * d, [0] * d, [R.min, R.max] * (d // 2)])
    assert int(sta.activation(x[None]).max()) == d * -R.min
    assert (d * -R.min).bit_length() == contract.sta_activation_format(d).bits
    top = Pipeline(CFG, [("act", ActReport(CFG))])
    run_amaranth_plans(top, [act_plan(x), act_plan(x[:3], report=False)], seed=SEED, stall=0.3)
    assert ACT_REGISTERS.addr("report")
