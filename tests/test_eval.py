"""The committed benchmark model and ``make eval`` (on a few clips)."""

import json

import pytest
import torch

from golden import benchmark
from golden.eval import DENSE_INT8, Point, _attn, _delta, _sta, run


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


def test_points_are_validated():
    with pytest.raises(ValueError, match="technique"):
        Point("x", "magic")
    with pytest.raises(ValueError, match="granularity"):
        Point("x", "attention", rho=0.5, granularity="row")


def test_eval_report_on_a_few_clips(tmp_path):
    torch.set_num_threads(1)
    points = [DENSE_INT8, _delta(0), _delta(4), _sta(16), _attn(0.5), _attn(0.5, "element")]
    report = run(points, 12, tmp_path, batch=6)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    for key in ("dense_float_top1", "dense_int8_top1"):
        assert 0 <= report[key] <= 100
    by = {p["label"]: p for p in report["points"]}
    assert set(by) == {p.label for p in points}
    for p in report["points"]:
        assert {"label", "top1", "ideal_saving"} <= set(p) and 0 <= p["top1"] <= 100
    dense = by["dense int8"]
    assert dense["ideal_saving"] == 1.0 and dense["agreement"] == 1.0
    assert dense["top1"] == report["dense_int8_top1"]
    # tau = 0 is exact: same predictions, yet fewer MACs (unchanged elements are skipped).
    assert by["delta tau=0"]["agreement"] == 1.0 and by["delta tau=0"]["ideal_saving"] > 1
    assert by["delta tau=4"]["ideal_saving"] > by["delta tau=0"]["ideal_saving"]
    assert by["STA r=16"]["ideal_saving"] > 1.2
    # The predictor is counted: attention-only savings stay below the attention share.
    sub = by["subvector rho=0.5"]
    assert sub["macs_by_layer"]["predictor"]["performed"] > 0
    assert 1 < sub["ideal_saving"] < 2
    assert sum(sub["macs_by_layer"][k]["dense"] for k in sub["macs_by_layer"]) == \
        report["dense_macs_per_clip"]
    table = (tmp_path / "report.md").read_text()
    assert "| subvector rho=0.5 | attention |" in table
    png = (tmp_path / "top1_vs_saving.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
