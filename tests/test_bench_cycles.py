"""``make cycles`` (:mod:`sim.bench_cycles`) on one small point: the benchmark's sparsity
statistics are fractions, a sparse model takes fewer cycles than the dense one, the split
arrays never beat the shared one (so the extrapolation does not rot
between its runs, which CI does not make)."""

import pytest

from sim import bench_cycles


@pytest.fixture(scope="module")
def stats():
    return bench_cycles.measure(clips=2)


def test_statistics_are_fractions_per_benchmark_block(stats):
    assert stats["split"] == "val" and stats["depth"] == len(stats["blocks"]) == 4
    for k, block in enumerate(stats["blocks"]):
        assert set(block["sent"]) == {"qkv", "proj", "fc1", "fc2"}
        assert all(0 < f < 1 for f in block["sent"].values()), block
        # Frame 0 of 8 has no delta reference: an eighth of block 0's tokens run dense; after
        # STA pruning, tokens whose position lost its reference run dense too.
        if k == 0:
            assert block["dense"] == pytest.approx(1 / 8), block
        assert 1 / 8 <= block["dense"] < 1, block


def test_a_small_point_sparse_dense_split_and_its_report(stats, tmp_path):
    point = dict(workload="vit_s", hw="large", positions=49, rho=0.5, stats=stats)
    dense = bench_cycles.evaluate(dict(point, mode="dense"))
    sparse = bench_cycles.evaluate(dict(point, mode="all"))
    split = bench_cycles.evaluate(dict(point, mode="all", split=(24, 8)))
    assert sparse["cycles"] < dense["cycles"]
    assert split["cycles"] > sparse["cycles"]
    assert 0.9 < sparse["array_utilisation"] <= 1.0
    assert len(sparse["block_cycles"]) == bench_cycles.WORKLOADS["vit_s"]["depth"]
    assert sparse["macs"] < dense["macs"]
