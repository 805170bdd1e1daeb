"""``make demo``'s report pieces on the tiny model, without a simulator: the work against the
dense model (counted here from the model's shapes), the tokens STA keeps, the picture."""

import argparse

import pytest

from boards import demo
from golden import macs


@pytest.fixture(scope="module")
def tiny():
    args = argparse.Namespace(model="tiny", clip=None, tau=None, rho=None, r=None)
    return demo._job(args)


def test_dense_work_is_the_dense_models_shapes(tiny):
    cfg, _, _, _, q, video, job = tiny
    v = q.cfg
    n, d, hd = v.n_t * v.n_s, v.dim, v.dim // v.heads
    block = (macs.dense_linear(n, d, 3 * d) + macs.dense_attention(n, v.heads, hd)
             + macs.dense_linear(n, d, d) + macs.dense_linear(n, d, v.mlp_ratio * d)
             + macs.dense_linear(n, v.mlp_ratio * d, d))
    want = (macs.dense_linear(n, v.tubelet_dim, d) + v.depth * block
            + macs.dense_linear(1, d, v.num_classes))
    work = demo._work(q, video, job, cfg.lanes)
    assert work["dense"] == want
    assert work["total"] == sum(work[k] for k in ("array",) + macs.OVERHEADS)
    # The tiny point prunes tokens and skips work: it performs less than the dense model.
    assert 0 < work["array"] < work["dense"] and work["saving"] > 1


def test_kept_tokens_follow_the_keep_lists(tiny):
    *_, job = tiny
    kept = demo._kept_tokens(job)
    assert len(kept) == len(job.blocks.blocks)
    assert len(kept[-1]) == job.pooled_tokens
    for before, after in zip([list(range(job.n_t * job.n_s))] + kept, kept):
        assert set(after) <= set(before) and after == sorted(after)
    names = demo._pass_names(job)
    assert names[0].startswith("embed") and names[-1].endswith("head")
    assert len(names) == len(job.plans())


def test_picture_is_written(tiny, tmp_path):
    *_, q, video, job = tiny
    n = len(job.plans())
    demo.picture(tmp_path / "demo.png", video, q.cfg, demo._kept_tokens(job), [10] * n,
                 [5] * n, demo._pass_names(job), "test")
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_planned_traffic_streams_the_blocks_constants_every_clip(tiny):
    """Streamed (one layer for two blocks), every clip sends every block's constants again;
    resident (two layers), a clip after the first sends none. The pixels, lists and results are
    the clip's either way, and line bytes are the payload plus whole frames."""
    from hw.model import Model
    from sim.model_job import TINY_RTSA, model_job
    cfg, _, _, settings, q, video, job = tiny
    assert job.blocks.streamed
    streamed = demo.planned(Model(cfg), job, 3_000_000)
    resident = demo.planned(Model(TINY_RTSA), model_job(TINY_RTSA, q, video, **settings),
                            3_000_000)
    from hw.link import LinkPorts
    ports = LinkPorts(Model(cfg))
    blocks = sum(len(s[2]) * ports.input(s[1])[2]
                 for b in job.blocks.blocks for s in b.loads if s[0] == "load")
    assert streamed["payload"] == resident["payload"]            # the same bytes, first clip
    assert resident["per_clip"]["payload"]["constants"] == 0
    assert streamed["per_clip"]["payload"]["constants"] == blocks
    assert 0 < blocks < streamed["payload"]["constants"]
    for p in (streamed, resident):
        per = p["per_clip"]
        for k in ("pixels", "lists", "results"):
            assert per["payload"][k] == p["payload"][k] > 0
        sent = sum(v for k, v in p["payload"].items() if k != "results")
        assert p["bytes_out"] > sent and p["line_ms"] == round(1e4 * p["bytes_out"] / 3e6, 3)
