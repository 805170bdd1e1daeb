"""One run of the linear engine, described independently of the simulator.

A :class:`LinearJob` holds everything a testbench sends to :class:`hw.linear_engine.LinearEngine`
(register writes, weight and channel-constant load beats, token beats) and everything it must
get back (output beats, and the exact values of the MAC counter), computed by the golden model
(:func:`golden.export.linear_vectors`). The Amaranth unit tests and the cocotb co-simulation
both run jobs, so both check the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden import contract
from golden.export import linear_vectors
from golden.intvidt import QLinear
from hw import cycles
from hw.linear_engine import channel_words, weight_words
from sim.driver import Plan

__all__ = ["LinearJob", "job_from_layer", "job_from_vectors"]


@dataclass
class LinearJob:
    """A linear-engine run and its golden expectation.

    Attributes
    ----------
    registers : list of (str, int)
        Setting writes before the start pulse (shape, threshold, mode), by register name.
    weights, channels : list of dict
        ``w_load`` and ``c_load`` beats.
    tokens : list of dict
        ``i`` beats (``data``, ``position``, ``last``).
    expected : list of dict
        ``o`` beats (``data``, ``last``).
    mac_lanes : int
        Performed MACs (sent elements x ``d_out``): the exact expected ``mac_lanes`` counter.
    pairs : int
        Sent elements summed over tokens and chunks: the expected ``pairs`` counter.
    outputs : torch.Tensor
        The expected outputs as a ``[N, d_out]`` tensor (what ``expected`` holds as beats).
    work : hw.cycles.LinearWork
        Elements sent per token and bitmap word: the cycle model's workload.
    """
    name: str
    config: object
    registers: list
    weights: list
    channels: list
    tokens: list
    expected: list
    n_tokens: int
    mac_lanes: int
    pairs: int
    outputs: object = None
    work: object = None

    @property
    def ideal_cycles(self):
        return self.mac_lanes / self.config.macs_per_cycle

    @property
    def predicted_cycles(self):
        """The cycle model's ``cycles`` of this job on the linear engine alone."""
        return cycles.linear_cycles(self.config, self.work).cycles

    def setup(self, stage, *, pulses=("clear_refs", "reset_load", "clear_error"), load=True):
        """The plan steps that program and load stage ``stage`` (no start); ``load=False``
        only programs it (its layer's weights and constants are already loaded)."""
        if not load:
            pulses = tuple(p for p in pulses if p != "reset_load")
        # The settings first: reset_load restarts the load addresses of the layer setting's
        # part.
        return ([("write", stage, r, v) for r, v in self.registers]
                + [("pulse", stage, pulses)]
                + ([("load", stage + ".w_load", self.weights),
                    ("load", stage + ".c_load", self.channels)] if load else []))

    def counters(self):
        """The counters the run must end with (``None``: read, not checked)."""
        return {"cycles": None, "busy": None, "mac_lanes": self.mac_lanes, "pairs": self.pairs,
                "tokens_out": self.n_tokens}

    def plan(self, stage="linear", *, tokens=None, timeout=20_000, load=True):
        """This job as a :class:`sim.driver.Plan` for a top whose stage ``stage`` is the
        linear engine and whose ``i``/``o`` are its streams (``tokens`` replaces the input
        beats, e.g. malformed ones; ``load=False`` runs on the weights already loaded)."""
        return Plan(name=self.name, setup=self.setup(stage, load=load) + [("start", stage, True)],
                    inputs=[("i", self.tokens if tokens is None else tokens)],
                    outputs=[("o", self.expected)], counters={stage: self.counters()},
                    done=[stage], timeout=timeout)


def _token_beats(config, x, spatial):
    e = config.bitmap_word
    beats = []
    for t in range(x.shape[0]):
        row = [int(v) for v in x[t]]
        words = len(row) // e
        for w in range(words):
            beats.append({"data": row[w * e:(w + 1) * e], "position": int(spatial[t]),
                          "last": w == words - 1})
    return beats


def job_from_layer(config, layer, x, frame, spatial, n_s, *, tau, delta_enable=True,
                   name="layer", block=0, logits=False):
    """A job for the integer linear layer ``layer`` (:class:`golden.intvidt.QLinear`) on
    tokens ``x`` ``[N, in]`` with their frames and positions, held in the engine's part
    ``block`` (its ``layer`` setting).

    ``delta_enable=False`` is the dense baseline: every token dense, every element sent.
    ``logits=True``: an engine built with ``logits=True`` (the classifier), whose outputs are
    the accumulators ``W x + b`` themselves (dense only).
    """
    x, frame, spatial = (torch.as_tensor(a, dtype=torch.int64) for a in (x, frame, spatial))
    d_out, d_in = layer.weight.shape
    if d_in % config.bitmap_word or d_out % config.lanes:
        raise ValueError("Layer {}x{} does not fit bitmap_word {} / lanes {}"
                         .format(d_out, d_in, config.bitmap_word, config.lanes))
    if logits and delta_enable:
        raise ValueError("The classifier's logits are computed densely (delta_enable=False)")
    vec = linear_vectors(layer, x, frame, spatial, n_s, tau if delta_enable else None)
    chunks = -(-d_out // config.macs_per_cycle)
    if delta_enable:
        bitmap = vec["bitmap"]
    else:
        bitmap = torch.ones(x.shape[0], d_in, dtype=torch.bool)  # the dense baseline sends zeros too
    sent = int(bitmap.sum())
    work = cycles.LinearWork.from_bitmap(bitmap.tolist(), d_out, config.bitmap_word)
    out = layer.accumulate(x) if logits else vec["out"]
    V = config.lanes
    expected = [{"data": [int(v) for v in out[t, s:s + V]], "last": s + V == d_out}
                for t in range(out.shape[0]) for s in range(0, d_out, V)]
    wide = layer.out_fmt.bits > 8
    if layer.out_fmt not in (contract.ACT, contract.RESID) and not logits:
        raise ValueError("The engine outputs int8 or int16, not {}".format(layer.out_fmt))
    registers = [("d_in", d_in), ("d_out", d_out), ("tokens", x.shape[0]),
                 ("tau", 0 if tau is None else tau), ("mode", int(delta_enable) | wide << 1),
                 ("layer", block)]
    return LinearJob(
        name=name, config=config, registers=registers,
        weights=weight_words(config, layer.weight.tolist()),
        channels=channel_words(config, layer.bias.tolist(), layer.mult.tolist(),
                               layer.shift.tolist()),
        tokens=_token_beats(config, x, spatial), expected=expected, n_tokens=x.shape[0],
        mac_lanes=sent * d_out, pairs=sent * chunks, outputs=out, work=work)


def job_from_vectors(config, arrays, n_s, *, tau, out_bits, delta_enable=True, name="layer"):
    """A job from exported vectors (:func:`golden.export.load`)."""
    fmt = contract.RESID if out_bits == 16 else contract.ACT
    t = {k: torch.as_tensor(arrays[k], dtype=torch.int64)
         for k in ("weight", "bias", "mult", "shift", "x", "frame", "spatial")}
    layer = QLinear(t["weight"], t["bias"], t["mult"], t["shift"], fmt)
    return job_from_layer(config, layer, t["x"], t["frame"], t["spatial"], n_s, tau=tau,
                          delta_enable=delta_enable, name=name)
