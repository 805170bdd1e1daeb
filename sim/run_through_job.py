"""One run of the run-through datapath (:class:`hw.run_through.RunThrough`): the QKV projection
of one or more sequences and their sparse attention, with the golden expectation.

The projection is the golden model's delta projection over the whole token stream (sequence
after sequence, frames numbered on, so a sequence's first frame is a delta against the previous
sequence's last one, as the hardware's references carry over); each sequence's attention uses
the sub-vector masks the golden predictor picks on its q and k
(:class:`golden.subvector.SubvectorAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden.subvector import SubvectorAttention
from hw import cycles
from sim.attention_job import AttentionJob, Sequence, attention_job
from sim.driver import Plan
from sim.linear_job import LinearJob, job_from_layer

__all__ = ["RunThroughJob", "run_through_job"]


@dataclass
class RunThroughJob:
    name: str
    linear: LinearJob
    attention: AttentionJob

    @property
    def ideal_cycles(self):
        """Performed MACs of both stages over the array's MACs per cycle."""
        return self.linear.ideal_cycles + self.attention.ideal_cycles

    @property
    def predicted_cycles(self):
        """The cycle model's ``cycles`` of this job (attention's counter: the whole run)."""
        return cycles.run_through_cycles(self.linear.config, self.linear.work,
                                         self.attention.work).cycles

    def plan(self, *, timeout=None):
        """This job as a :class:`sim.driver.Plan` for :class:`hw.run_through.RunThrough`:
        program and load the projection (stage ``qkv``), program attention, start attention
        (its ``cycles`` then span the whole run-through), then the projection."""
        lin, att = self.linear, self.attention
        if timeout is None:
            # Attention on a sequence starts once its last token is projected.
            timeout = int(3 * lin.ideal_cycles) + 50_000
        setup = (lin.setup("qkv", pulses=("clear_refs", "reset_load"))
                 + [("write", "attention", r, v) for r, v in att.registers]
                 + [("start", "attention", False), ("start", "qkv", True)])
        return Plan(name=self.name, setup=setup,
                    inputs=[("i", lin.tokens), ("attention.masks", att.masks)],
                    outputs=[("o", att.expected)],
                    counters={"attention": att.counters(),
                              "qkv": {k: v for k, v in lin.counters().items() if k != "pairs"}},
                    done=["attention", "qkv"], timeout=timeout)


def run_through_job(config, layer, xs, n_s, *, tau, rho, heads, softmax_mult, softmax_shift,
                    attn_mult, attn_shift, delta_enable=True, name="run_through"):
    """A job for the QKV ``layer`` (:class:`golden.intvidt.QLinear`) on the sequences ``xs``
    (each ``[N, d]`` int8, frame-major tokens of ``n_s`` positions per frame)."""
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError("Sequences of one job must have the same length")
    frames_per_seq = -(-n // n_s)
    tok = torch.arange(n)
    frame = torch.cat([s * frames_per_seq + tok // n_s for s in range(len(xs))])
    spatial = (tok % n_s).repeat(len(xs))
    lin = job_from_layer(config, layer, torch.cat(xs), frame, spatial, n_s, tau=tau,
                         delta_enable=delta_enable, name=name + "/qkv")
    hd = lin.outputs.shape[1] // (3 * heads)
    seqs = []
    for s in range(len(xs)):
        q, k, v = lin.outputs[s * n:(s + 1) * n].reshape(n, 3, heads, hd).permute(1, 2, 0, 3)
        keep = None
        if rho < 1:
            keep = SubvectorAttention(config.lanes, rho).keep(0, q[None], k[None])[0][0]
        seqs.append(Sequence(q, k, v, keep))
    att = attention_job(config, seqs, softmax_mult=softmax_mult, softmax_shift=softmax_shift,
                        attn_mult=attn_mult, attn_shift=attn_shift, name=name + "/attention")
    return RunThroughJob(name=name, linear=lin, attention=att)
