"""One run of the on-chip sub-vector predictor (:class:`hw.predictor.Predictor`) with its golden
expectation: the mask beats of :meth:`golden.subvector.SubvectorAttention.keep` and the
predictor MACs the golden model counts (:meth:`golden.subvector.SubvectorAttention.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden.subvector import SubvectorAttention
from hw.keep_select import keep_count
from sim.attention_job import block_masks, qkv_beats
from sim.driver import Plan

__all__ = ["PredictorJob", "predictor_job", "predicted_keep"]


def predicted_keep(config, seq, rho):
    """The golden keep mask ``[H, N, N]`` of sequence ``seq`` (:class:`sim.attention_job.Sequence`
    fields ``q``, ``k``) at keep ratio ``rho`` with ``lanes``-long sub-vectors, and the golden
    predictor MACs (0 when ``rho`` keeps every column: the hardware then issues no products)."""
    n = seq.q.shape[1]
    mask, macs = SubvectorAttention(config.lanes, rho).keep(0, seq.q[None], seq.k[None])
    if mask is None:        # rho = 1: dense attention, no predictor
        return torch.ones(seq.q.shape[0], n, n, dtype=torch.bool), 0
    return mask[0], (0 if keep_count(n, rho) >= n else macs)


@dataclass
class PredictorJob:
    """A predictor run: register writes, the QKV beats (they also come back on ``o``), the
    expected mask beats and counters, and each sequence's golden keep mask ``[H, N, N]``
    (``keeps``, what the attention engine is to compute with)."""
    name: str
    config: object
    registers: list
    qkv: list
    masks: list
    mac_lanes: int
    busy: int
    keeps: list

    @property
    def ideal_cycles(self):
        return self.mac_lanes / self.config.macs_per_cycle

    def counters(self):
        return {"cycles": None, "busy": self.busy, "mac_lanes": self.mac_lanes,
                "blocks": len(self.masks)}

    def plan(self, stage="predict", *, qkv=None, timeout=50_000):
        """This job for a top whose ``i``/``o`` are the predictor's QKV streams and whose
        ``<stage>.masks`` is its mask output (``qkv`` replaces the input beats)."""
        beats = self.qkv if qkv is None else qkv
        return Plan(name=self.name,
                    setup=[("write", stage, r, v) for r, v in self.registers]
                    + [("start", stage, True)],
                    inputs=[("i", beats)], outputs=[("o", beats), (stage + ".masks", self.masks)],
                    counters={stage: self.counters()}, done=[stage], timeout=timeout)


def predictor_job(config, sequences, rho, *, name="predictor"):
    """A job for :class:`sim.attention_job.Sequence` s of one shape (``v`` is passed through,
    ``keep`` is ignored: the predictor computes it) at keep ratio ``rho``."""
    heads, n, hd = sequences[0].q.shape
    if hd != config.head_dim:
        raise ValueError("Head dimension {} differs from the predictor's {}"
                         .format(hd, config.head_dim))
    keep = keep_count(n, rho)
    blocks = -(-n // config.lanes)
    qkv, masks, keeps, macs = [], [], [], 0
    for seq in sequences:
        mask, m = predicted_keep(config, seq, rho)
        qkv += qkv_beats(config, seq.q, seq.k, seq.v)
        masks += block_masks(config, mask, heads, n)
        keeps.append(mask)
        macs += m
    # Array beats: per head, unit groups of `rows` query blocks times key groups of `lanes`
    # keys, head_dim beats each.
    busy = 0 if keep >= n else (len(sequences) * heads * -(-blocks // config.rows) * blocks
                                * config.head_dim)
    registers = [("tokens", n), ("heads", heads), ("sequences", len(sequences)), ("keep", keep)]
    return PredictorJob(name=name, config=config, registers=registers, qkv=qkv, masks=masks,
                        mac_lanes=macs, busy=busy, keeps=keeps)
