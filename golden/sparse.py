"""Sparse executions of the integer VidT: the sparsity techniques composed on one model.

:class:`SparseExecution` plugs into :meth:`golden.intvidt.IntVidT.forward` and applies, each
optionally:

* inter-frame delta linear projections (:mod:`golden.delta`) on QKV, output projection, fc1
  and fc2, with a threshold per layer kind;
* sub-vector attention sparsity (an object with ``keep(block, q, k) -> (mask, predictor_macs)``);
* token pruning (an object with ``prune(block, x, keys, tokens) -> (x, tokens)``).

MACs are accounted per block and layer in ``macs`` (dense and performed); the ideal
computation saving is ``dense / performed`` summed over the model.
"""

from __future__ import annotations

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
    tau : None, int or dict
        Delta thresholds: ``None`` runs the linears densely; an int applies to every layer of
        :data:`DELTA_LAYERS`; a dict maps layer names to thresholds (missing names run dense).
    attention : object, optional
        Sub-vector attention policy.
    pruner : object, optional
        Token pruner.
    """

    def __init__(self, n_s, *, tau=None, attention=None, pruner=None):
        super().__init__()
        if isinstance(tau, int):
            tau = {name: tau for name in DELTA_LAYERS}
        unknown = set(tau or ()) - set(DELTA_LAYERS)
        if unknown:
            raise ValueError("No delta projection for layers {}; choose from {}"
                             .format(sorted(unknown), ", ".join(DELTA_LAYERS)))
        self.n_s, self.tau = n_s, dict(tau or {})
        self.attention, self.pruner = attention, pruner
        self.delta = {}

    def linear(self, block, name, layer, x, tokens):
        if name not in self.tau or tokens is None:
            return super().linear(block, name, layer, x, tokens)
        state = self.delta.get((block, name))
        if state is None:
            state = self.delta[(block, name)] = DeltaLinear(layer, self.tau[name], self.n_s)
            self.macs[(block, name)] = state.count
        return state(x, tokens.frame, tokens.spatial)

    def attention_keep(self, block, q, k):
        if self.attention is None:
            return None
        keep, predictor_macs = self.attention.keep(block, q, k)
        self.count(block, "predictor", 0, predictor_macs)
        return keep

    def prune(self, block, x, keys, tokens):
        if self.pruner is None:
            return x, tokens
        return self.pruner.prune(block, x, keys, tokens)
