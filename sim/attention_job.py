"""One run of the attention engine, described independently of the simulator.

An :class:`AttentionJob` holds what a testbench sends to
:class:`hw.attention_engine.AttentionEngine` (register writes, QKV beats as the projection emits
them, block-major mask beats) and what it must get back (output beats, the exact MAC and
sub-vector counters), the expectation computed by the golden model's integer attention
(:func:`golden.intvidt.attention_core`). The Amaranth unit tests, the cocotb co-simulation and
``make bench`` all run jobs, so all check the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden.intvidt import attention_core
from hw import cycles
from sim.driver import Plan

__all__ = ["AttentionJob", "Sequence", "attention_job", "qkv_beats", "block_masks",
           "expected_beats"]


@dataclass
class Sequence:
    """One sequence of attention: ``q``, ``k``, ``v`` ``[H, N, hd]`` int8 and the computed
    score entries ``keep`` ``[H, N, N]`` (``None``: dense)."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    keep: torch.Tensor | None = None


@dataclass
class AttentionJob:
    """An attention-engine run and its golden expectation.

    Attributes
    ----------
    registers : list of (str, int)
        Setting writes before the start pulse, by register name.
    qkv, masks : list of dict
        ``qkv`` and ``masks`` beats of every sequence, in order.
    expected : list of dict
        ``o`` beats.
    mac_lanes : int
        Performed MACs of QK^T and A V (kept entries x head_dim x 2): the exact ``mac_lanes`` counter.
    subvectors : int
        Kept sub-vectors: the exact ``SUBVECTORS`` counter.
    outputs : list of torch.Tensor
        Each sequence's expected output ``[H, N, hd]`` (what ``expected`` holds as beats).
    work : hw.cycles.AttentionWork
        Kept key columns per sequence, head and query block: the cycle model's workload.
    """
    name: str
    config: object
    registers: list
    qkv: list
    masks: list
    expected: list
    mac_lanes: int
    subvectors: int
    sequences: int
    outputs: list = None
    work: object = None

    @property
    def ideal_cycles(self):
        return self.mac_lanes / self.config.macs_per_cycle

    @property
    def predicted_cycles(self):
        """The cycle model's ``cycles`` of this job on the attention engine alone."""
        return cycles.attention_cycles(self.config, self.work).cycles

    def counters(self):
        """The counters the run must end with (``None``: read, not checked)."""
        return {"cycles": None, "busy": None, "mac_lanes": self.mac_lanes,
                "subvectors": self.subvectors, "beats_out": len(self.expected)}

    def plan(self, stage="attention", *, qkv=None, masks=None, timeout=20_000):
        """This job as a :class:`sim.driver.Plan` for a top whose stage ``stage`` is the
        attention engine and whose ``i``/``o`` are its streams (``qkv``, ``masks`` replace the
        input beats, e.g. malformed ones)."""
        return Plan(name=self.name,
                    setup=[("write", stage, r, v) for r, v in self.registers]
                    + [("start", stage, True)],
                    inputs=[("i", self.qkv if qkv is None else qkv),
                            (stage + ".masks", self.masks if masks is None else masks)],
                    outputs=[("o", self.expected)], counters={stage: self.counters()},
                    done=[stage], timeout=timeout)


def qkv_beats(config, q, k, v):
    """The projection's output beats of ``q``, ``k``, ``v`` ``[H, N, hd]``: per token the
    channels ``[q | k | v]`` (head-major), ``lanes`` per beat."""
    V = config.lanes
    h, n, hd = q.shape
    tokens = torch.cat([t.permute(1, 0, 2).reshape(n, h * hd) for t in (q, k, v)], dim=1)
    beats = []
    for t in range(n):
        row = tokens[t].tolist()
        for s in range(0, len(row), V):
            beats.append({"data": row[s:s + V], "last": s + V == len(row)})
    return beats


def block_masks(config, keep, heads, n):
    """Block-major mask beats of ``keep`` ``[H, N, N]`` (``None``: everything kept): per head
    and query block, the kept key columns. The engine computes sub-vectors, so every query of
    a block must keep the same columns."""
    V = config.lanes
    blocks = -(-n // V)
    beats = []
    for h in range(heads):
        for b in range(blocks):
            if keep is None:
                mask = (1 << n) - 1
            else:
                rows = keep[h, b * V:min(n, (b + 1) * V)]
                if not bool((rows == rows[0]).all()):
                    raise ValueError("keep of head {} block {} is not sub-vector shaped"
                                     .format(h, b))
                mask = sum(1 << j for j in torch.nonzero(rows[0]).flatten().tolist())
            beats.append({"mask": mask, "last": b == blocks - 1})
    return beats


def expected_beats(config, out):
    """Output beats of the attention result ``out`` ``[H, N, hd]`` (int8)."""
    V = config.lanes
    h, n, hd = out.shape
    blocks = -(-n // V)
    beats = []
    for head in range(h):
        for b in range(blocks):
            for dim in range(hd):
                beats.append({"data": [int(out[head, b * V + l, dim]) if b * V + l < n else 0
                                       for l in range(V)],
                              "head": head, "block": b, "dim": dim,
                              "last": head == h - 1 and b == blocks - 1 and dim == hd - 1})
    return beats


def attention_job(config, sequences, *, softmax_mult, softmax_shift, attn_mult, attn_shift,
                  name="attention"):
    """A job for one or more :class:`Sequence` of equal shape."""
    first = sequences[0]
    heads, n, hd = first.q.shape
    if hd != config.head_dim:
        raise ValueError("Head dimension {} differs from the engine's {}"
                         .format(hd, config.head_dim))
    qkv, masks, expected, outputs = [], [], [], []
    mac_lanes = subvectors = 0
    for seq in sequences:
        if tuple(seq.q.shape) != (heads, n, hd):
            raise ValueError("Sequences of one job must have the same shape")
        keep = seq.keep
        mask_beats = block_masks(config, keep, heads, n)
        full_keep = torch.ones(heads, n, n, dtype=torch.bool) if keep is None else keep
        _, _, _, out = attention_core(seq.q, seq.k, seq.v, full_keep, softmax_mult,
                                      softmax_shift, attn_mult, attn_shift)
        qkv += qkv_beats(config, seq.q, seq.k, seq.v)
        masks += mask_beats
        expected += expected_beats(config, out)
        outputs.append(out)
        mac_lanes += int(full_keep.sum()) * hd * 2
        subvectors += sum(bin(b["mask"]).count("1") for b in mask_beats)
    blocks = -(-n // config.lanes)
    kept = [[[bin(b["mask"]).count("1") for b in masks[(s * heads + h) * blocks:][:blocks]]
             for h in range(heads)] for s in range(len(sequences))]
    work = cycles.AttentionWork(n, heads, hd, tuple(tuple(map(tuple, seq)) for seq in kept))
    registers = [("tokens", n), ("heads", heads), ("sequences", len(sequences)),
                 ("softmax_mult", softmax_mult), ("softmax_shift", softmax_shift),
                 ("out_mult", attn_mult), ("out_shift", attn_shift)]
    return AttentionJob(name=name, config=config, registers=registers, qkv=qkv, masks=masks,
                        expected=expected, mac_lanes=mac_lanes, subvectors=subvectors,
                        sequences=len(sequences), outputs=outputs, work=work)
