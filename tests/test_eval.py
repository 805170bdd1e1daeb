"""The committed benchmark model, the validation search's committed result, and ``make eval``
(on a few clips)."""

import json
import random

import pytest
import torch

from golden import benchmark, search
from golden.eval import DENSE_INT8, Point, paired_interval, points, run


def test_committed_model_is_trained_and_reproducible():
    meta = benchmark.metadata()
    assert meta["command"].startswith("python -m golden.train")
    assert meta["heldout_split"]["clips"] >= 1000
    # Clearly above chance (1/16) and not saturated, so that losses show.
    assert 3 * meta["chance_top1"] < meta["heldout_top1"] < 0.99
    cfg = meta["model_config"]
    assert cfg["depth"] >= 4 and cfg["dim"] >= 64 and cfg["heads"] >= 2
    model = benchmark.float_model()
    assert model.cfg.n_t >= 8 and model.cfg.n_s >= 49
    assert benchmark.WEIGHTS.stat().st_size < 2_000_000


def test_missing_weights_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="golden.train"):
        benchmark.metadata(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="golden.search"):
        search.load(tmp_path / "nothing.json")


def test_the_committed_choices_were_made_on_validation():
    # Validation clips start after the clips training monitored, on the val stream: disjoint
    # from training, calibration (training clips) and test.
    res = search.load()
    assert res["split"] == "val" and benchmark.EVAL_SPLIT == "test"
    assert res["validation_start"] >= benchmark.metadata()["heldout_split"]["clips"]
    assert res["command"].startswith("python -m golden.search")
    for key in ("delta", "sta", "attention", "uniform", "search"):
        c = res["chosen"][key]
        assert c["diff_pp"] >= -search.SELECT_MARGIN, key
        Point.from_dict(c["label"], c["technique"], c["params"])    # a valid point
    # The search's choice: the most saving confirmed point within the margin, on the pooled
    # estimate of the screening and the confirmation clips (disjoint, further val clips).
    assert res["confirm_start"] >= res["validation_start"] + res["validation_clips"]
    confirmed = res["confirmed"]["search"]
    for e in confirmed:
        n0, n1 = res["validation_clips"], res["confirm_clips"]
        assert e["diff_pp"] == pytest.approx(
            (n0 * e["screen_diff_pp"] + n1 * e["confirm_diff_pp"]) / (n0 + n1), abs=0.01)
    # The choice: the most saving confirmed point that held; the first tried was the
    # screening's own choice.
    held = [e for e in confirmed if e["diff_pp"] >= -search.SELECT_MARGIN]
    uniform = res["chosen"]["uniform"]
    assert uniform in res["confirmed"]["uniform"] and uniform["diff_pp"] >= -search.SELECT_MARGIN
    if held:
        assert res["chosen"]["search"] == max(held, key=lambda e: e["ideal_saving"])
        assert res["chosen"]["search"]["ideal_saving"] > uniform["ideal_saving"]
    else:       # nothing beyond the uniform choice held: the search's choice is that point
        assert res["chosen"]["search"] == dict(uniform, technique="search")
    screened = [e for e in res["searched"] if e["diff_pp"] >= -search.SELECT_MARGIN]
    assert confirmed[0]["ideal_saving"] == max(e["ideal_saving"] for e in screened)
    # The front: nothing evaluated beats a front member in both saving and top-1.
    for f in res["front"]:
        assert not any(e["ideal_saving"] > f["ideal_saving"] and e["top1"] > f["top1"]
                       for e in res["searched"])


def test_points_are_validated():
    with pytest.raises(ValueError, match="technique"):
        Point("x", "magic")
    with pytest.raises(ValueError, match="granularity"):
        Point("x", "attention", rho=0.5, granularity="row")
    with pytest.raises(ValueError, match="order"):
        Point("x", "attention", rho=0.5, order="zigzag")


def test_paired_interval():
    n = 400
    rng = random.Random(3)
    ref = torch.tensor([rng.random() < 0.9 for _ in range(n)])
    # The same predictions: no difference, no width.
    assert paired_interval(ref, ref) == (0.0, 0.0)
    # Ten clips lost of 400: -2.5 pp, the interval around it and below zero.
    worse = ref.clone()
    worse[ref.nonzero().flatten()[:10]] = False
    lo, hi = paired_interval(worse, ref)
    assert lo < -2.5 < hi < 0
    # Seeded: the same interval twice.
    assert paired_interval(worse, ref) == (lo, hi)


def test_search_operators_stay_on_the_grid():
    rng = random.Random(0)
    g = ((4,) * 4, (0.25,) * 4, (8,) * 3)
    for _ in range(50):
        g = search._mutate(rng, search._cross(rng, g, ((None,) * 4, (1.0,) * 4, (20,) * 3)))
        assert all(t in search.TAUS for t in g[0]) and all(r in search.RHOS for r in g[1])
        assert all(r in search.RS for r in g[2])
    a = dict(ideal_saving=2.0, top1=90.0, diff_pp=0.0)
    b = dict(ideal_saving=3.0, top1=89.0, diff_pp=-1.0)
    c = dict(ideal_saving=1.5, top1=89.5, diff_pp=-0.5)              # dominated by a
    assert search._front([a, b, c], lambda e: e["ideal_saving"]) == [a, b]
    assert search._best_within([a, b, c], lambda e: e["ideal_saving"]) is a


def test_eval_report_on_a_few_clips(tmp_path):
    torch.set_num_threads(1)
    chosen = search.load()["chosen"]
    # The chosen attention point is also on its curve (the same label and parameters).
    labels = [chosen["delta"]["label"], chosen["search"]["label"], chosen["attention"]["label"],
              "subvector rho=0.25", "element rho=0.25"]
    report = run(12, tmp_path, batch=6, only=labels)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    for key in ("dense_float_top1", "dense_int8_top1"):
        assert 0 <= report[key] <= 100
    by = {p["label"]: p for p in report["points"]}
    assert set(by) == set(labels) | {"dense int8"}
    dense = by["dense int8"]
    assert dense["ideal_saving"] == 1.0 and dense["changed"] == 0 and dense["ci95_pp"] == [0, 0]
    assert dense["top1"] == report["dense_int8_top1"]
    for p in report["points"]:
        lo, hi = p["ci95_pp"]
        assert lo <= p["diff_pp"] <= hi
        # Every overhead is in the work the saving divides by.
        assert p["work_per_clip"] == sum(p["costs_per_clip"].values())
        assert p["ideal_saving"] == round(report["dense_macs_per_clip"] / p["work_per_clip"], 3)
    delta = by[chosen["delta"]["label"]]
    assert delta["costs_per_clip"]["compare"] > 0 and delta["ideal_saving"] > 1
    searched = by[chosen["search"]["label"]]
    assert searched["costs_per_clip"]["predictor"] > 0
    assert searched["ideal_saving"] > delta["ideal_saving"] and searched["cycle_saving"] > 1
    assert searched["costs_per_clip"]["sta"] > 0 and searched["costs_per_clip"]["compare"] > 0
    sub = by["subvector rho=0.25"]
    assert 1 < sub["ideal_saving"] < 2 and sub["macs_by_layer"]["select"]["performed"] > 0
    table = (tmp_path / "report.md").read_text()
    assert "| subvector rho=0.25 |" in table and "95 % interval" in table
    assert table.count(f"| {chosen['attention']['label']} |") == 1     # one row, not two
    for name in ("top1_vs_saving.png", "granularity.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_reported_points_follow_the_choices():
    chosen = search.load()["chosen"]
    pts = points(chosen)
    assert pts[0] == ("reference", DENSE_INT8)
    labels = [p.label for g, p in pts if g == "chosen"]
    want = [chosen[k]["label"] for k in ("delta", "sta", "attention", "uniform", "search")]
    if chosen["search"]["params"] == chosen["uniform"]["params"]:
        want = want[:-1]        # reported once
    assert labels == want
    order = chosen["attention"]["params"]["order"]
    curves = [p for g, p in pts if g == "curve"]
    assert {p.granularity for p in curves} == {"subvector", "block", "element"}
    assert {p.order for p in curves} == {order, "frame"}
