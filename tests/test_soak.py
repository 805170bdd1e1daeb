"""The soak (``make soak``, :mod:`sim.soak`): a tiny campaign under Verilator (its report, no
mismatch), a corrupted expectation that the soak must report with its seed and fail on, and
the comparator and the job draws without a simulator. The full soak (10^6 outputs) is not
part of CI."""

import copy
import json

import pytest

from sim.soak import CAMPAIGNS, CONFIG, check_job, corrupt, describe, job_seeds, main, soak_job

REPORT_FIELDS = {"campaign", "design", "simulator", "jobs", "seeds", "outputs", "beats", "cycles",
                 "mismatches", "mismatch_details", "stall_probabilities", "wall_s"}


@pytest.mark.cosim
def test_tiny_campaign_reports_every_seed_and_no_mismatch(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--outputs", "2000", "--campaign", "linear_delta",
                 "--seed", "5"]) == 0
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["ok"] and report["mismatches"] == 0 and report["outputs"] >= 2000
    (row,) = report["campaigns"]
    assert REPORT_FIELDS <= set(row)
    assert row["simulator"] == "verilator" and row["mismatches"] == 0 and row["failure"] is None
    first = job_seeds(5, "linear_delta")
    assert row["seeds"] == list(range(first, first + row["jobs"])) and row["jobs"] >= 1
    records = [json.loads(line) for line in (tmp_path / "linear_delta.jsonl").read_text()
               .splitlines()]
    assert [r["seed"] for r in records] == row["seeds"]
    assert sum(r["outputs"] for r in records) == row["outputs"] == report["outputs"]
    assert all(r["mismatch"] is None and r["cycles"] > 0 for r in records)
    assert set(row["stall_probabilities"]) >= {"inputs", "outputs", "max_wait"}
    assert "| linear_delta |" in (tmp_path / "soak.md").read_text()
    out = capsys.readouterr().out
    assert "seeds {}..".format(first) in out and "/ 2000 outputs" in out


@pytest.mark.cosim
def test_corrupted_expectation_is_reported_with_its_seed_and_fails(tmp_path, capsys):
    seed = job_seeds(5, "linear_delta") + 3     # 1008 outputs, stalls 0.5 in, 0.8 out
    assert main(["--out", str(tmp_path), "--campaign", "linear_delta", "--job-seed", str(seed),
                 "--corrupt-seed", str(seed)]) == 1
    report = json.loads((tmp_path / "soak.json").read_text())
    assert not report["ok"] and report["mismatches"] == 1
    (detail,) = report["campaigns"][0]["mismatch_details"]
    assert "seed {}".format(seed) in detail and "got" in detail and "want" in detail
    assert "MISMATCH linear_delta seed {}".format(seed) in capsys.readouterr().out


@pytest.mark.parametrize("campaign", CAMPAIGNS)
def test_comparator_finds_the_corrupted_element(campaign):
    seed = job_seeds(2, campaign) + 3
    job = soak_job(CONFIG, campaign, seed)
    (port, want), = job.plan.outputs
    result = {"outputs": {port: copy.deepcopy(want)}}
    short = {"outputs": {port: copy.deepcopy(want)[:-1]}}
    assert check_job(job, None, short)["field"] == "count"     # a missing beat
    corrupt(job)
    mismatch = check_job(job, None, result)
    assert mismatch["port"] == port and mismatch["field"].startswith("data[")
    assert abs(mismatch["got"] - mismatch["want"]) == 1
    line = describe(dict(campaign=campaign, seed=seed, mismatch=mismatch))
    assert "seed {}".format(seed) in line and "--job-seed {}".format(seed) in line


@pytest.mark.parametrize("campaign", CAMPAIGNS)
def test_jobs_are_reproducible_from_their_seed(campaign):
    first = job_seeds(1, campaign)
    jobs = [soak_job(CONFIG, campaign, first + k) for k in range(3)]
    again = soak_job(CONFIG, campaign, first)
    assert again.plan.outputs == jobs[0].plan.outputs and again.stall == jobs[0].stall
    assert again.shape == jobs[0].shape
    assert all(j.outputs > 0 and j.bound_cycles() > j.predicted_cycles for j in jobs)
    assert len({json.dumps(j.shape, sort_keys=True) for j in jobs}) == 3
