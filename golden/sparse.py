"""Sparse executions of the integer VidT: the sparsity techniques composed on one model.

:class:`SparseExecution` plugs into :meth:`golden.intvidt.IntVidT.forward` and applies, each
optionally:

* inter-frame delta linear projections (:mod:`golden.delta`) on QKV, output projection, fc1
  and fc2, with a threshold per layer kind;
* sub-vector attention sparsity (an object with ``keep(block, q, k) -> (mask, predictor_macs)``);
* token pruning (an object with ``prune(block, x, keys, tokens) -> (x, tokens)``).

MACs are accounted per block and layer in ``macs`` (dense and performed, :mod:`golden.macs`),
with the overheads as layers of their own (``predictor`` and ``select``, ``compare``, ``sta``:
no dense work);
the ideal computation saving is ``dense / performed`` summed over the model.
"""

from __future__ import annotations

from golden import macs
from golden.delta import DeltaLinear
from golden.intvidt import Execution

__all__ = ["DELTA_LAYERS", "SparseExecution"]

#: Token-wise layers that run as delta projections.
DELTA_LAYERS = ("qkv", "proj", "fc1", "fc2")


class SparseExecution(Execution):
    """Integer model execution with delta projections, sparse attention and token pruning.

    Parameters
    ----------
    n_s : int
        Spatial positions per frame (delta references are kept per position).
    tau : None, int, dict or sequence
        Delta thresholds: ``None`` runs the linears densely; an int applies to every layer of
        :data:`DELTA_LAYERS`; a dict maps layer names to thresholds (missing names run dense);
        a sequence gives each block its own (``None``, an int or such a dict), as the
        layerwise search chooses.
    attention : object, optional
        Sub-vector attention policy.
    pruner : object, optional
        Token pruner.
    """

    def __init__(self, n_s, *, tau=None, attention=None, pruner=None):
        super().__init__()
        per_block = isinstance(tau, (list, tuple))
        self.tau_of_block = [self._layer_taus(t) for t in (tau if per_block else [tau])]
        self.per_block = per_block
        self.n_s = n_s
        self.attention, self.pruner = attention, pruner
        self.delta = {}

    @staticmethod
    def _layer_taus(tau):
        if tau is None:
            return {}
        if isinstance(tau, int):
            tau = {name: tau for name in DELTA_LAYERS}
        if not isinstance(tau, dict):
            raise ValueError("Delta thresholds must be None, an int or a dict, not {!r}"
                             .format(tau))
        unknown = set(tau) - set(DELTA_LAYERS)
        if unknown:
            raise ValueError("No delta projection for layers {}; choose from {}"
                             .format(sorted(unknown), ", ".join(DELTA_LAYERS)))
        return {k: t for k, t in tau.items() if t is not None}

    def tau(self, block, name):
        """The delta threshold of ``block``'s layer ``name`` (``None``: dense)."""
        taus = self.tau_of_block
        if self.per_block:
            return taus[block].get(name) if 0 <= block < len(taus) else None
        return taus[0].get(name)

    def linear(self, block, name, layer, x, tokens):
        tau = self.tau(block, name)
        if tau is None or tokens is None:
            return super().linear(block, name, layer, x, tokens)
        state = self.delta.get((block, name))
        if state is None:
            state = self.delta[(block, name)] = DeltaLinear(layer, tau, self.n_s)
            self.macs[(block, name)] = state.count
        before = state.count.compares
        y = state(x, tokens.frame, tokens.spatial)
        self.count(block, "compare", 0, state.count.compares - before)
        return y

    def attention_keep(self, block, q, k, tokens=None, scale=None):
        if self.attention is None:
            return None
        keep, predictor_macs, compares = self.attention.keep_costed(block, q, k, tokens, scale)
        if keep is not None:
            self.count(block, "predictor", 0, predictor_macs)
            self.count(block, "select", 0, compares)
        return keep

    def prune(self, block, x, keys, tokens):
        if self.pruner is None:
            return x, tokens
        before = len(self.pruner.records)
        x, tokens = self.pruner.prune(block, x, keys, tokens)
        heads, hd = keys.shape[1], keys.shape[3]
        for rec in self.pruner.records[before:]:
            sched = self.pruner.schedule[rec.stage - 1]
            if sched["r"] == 0:
                continue                # a stage that drops nothing is not run by the host
            self.count(block, "sta", 0, x.shape[0] * macs.sta_stage_ops(
                sched["n_groups"], sched["group_size"], sched["kept"], heads=heads,
                head_dim=hd, dim=x.shape[-1]))
        return x, tokens
