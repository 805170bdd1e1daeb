"""A whole clip over the link, with STA's selection in the host from what the chip reports.

:func:`run_clip` runs the passes of a :class:`sim.model_job.ModelJob` (the embedding and block
0, each later block, the head) over a :class:`boards.link.Link`. After an STA stage block the
chip has sent its reports (each token's keys summed over heads, and ``sum |x|``); the host
selects from those with :meth:`golden.sta.STAPruner.prune_reported` (float64, bit-identical
to the golden selection on the tensors) and loads the keep list into the token buffer and the
kept tokens' spatial positions into the projections before it starts the next pass. The
job's own keep lists (from the golden model) must agree: a chip whose reports lead elsewhere
fails there, before its next pass.

Interface, pass by pass: the host receives ``sta_keys.keys`` (``N * head_dim / lanes`` beats)
and ``sta_act.act`` (``N`` beats) during a stage block's pass; between passes it sends
``buffer.keep_load`` (one index a beat: the kept tokens among the ``N``, frame group after frame
group, ascending) and ``<projection>_in.pos_load`` (their spatial positions) for each of the four
projections.
"""

import torch

from boards.link import run_plans
from golden.sta import STAPruner

__all__ = ["run_clip", "host_selection"]


def host_selection(pruner, block, outputs, heads, head_dim):
    """The keep list and spatial positions the host derives from block ``block``'s reports
    (``outputs``: a pass result's received streams)."""
    keys = [v for beat in outputs["sta_keys.keys"] for v in beat["data"]]
    act = [beat["sum"] for beat in outputs["sta_act.act"]]
    key_sum = torch.tensor(keys, dtype=torch.int64).reshape(1, len(act), head_dim)
    kept = pruner.prune_reported(block, key_sum, heads, torch.tensor([act]))
    if kept is None:
        raise ValueError("no STA stage is due after block {}".format(block))
    return kept[0].tolist(), pruner.spatial[0].tolist()


def run_clip(link, job, *, clock_hz=48e6, deadline=10.0):
    """Run ``job`` (:class:`sim.model_job.ModelJob`) over ``link``; returns ``(logits, results)``
    with every pass's result (outputs and counters, checked against the job)."""
    plans = job.plans()
    keeps = job.blocks.keeps
    pruner = STAPruner(job.n_t, job.n_s, job.r, len(keeps)) if job.r else None
    results = []
    for k, plan in enumerate(plans):
        if k > 0 and keeps[k - 1] is not None:
            keep, positions = host_selection(pruner, k - 1, results[-1]["outputs"], job.heads,
                                             job.head_dim)
            if keep != keeps[k - 1]:
                raise AssertionError("pass {}: the host's selection from the chip's reports {} "
                                     "differs from the golden model's {}".format(
                                         k, keep, keeps[k - 1]))
            plan.setup = [_with_lists(step, keep, positions) for step in plan.setup]
        results += run_plans(link, [plan], clock_hz=clock_hz, deadline=deadline)
    logits = [v for beat in results[-1]["outputs"]["o"] for v in beat["data"]]
    return logits, results


def _with_lists(step, keep, positions):
    """A plan step with the keep list and positions the host selected."""
    if step[0] != "load":
        return step
    if step[1] == "buffer.keep_load":
        return ("load", step[1], [{"index": i} for i in keep])
    if step[1].endswith("_in.pos_load"):
        return ("load", step[1], [{"position": p} for p in positions])
    return step
