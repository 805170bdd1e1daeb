"""Sub-vector attention sparsity (RTSA; docs/architecture.md) and its granularity baselines.

For one head the score matrix ``S = Q K^T`` (queries in rows, keys in columns) is cut into
*units*; a cheap predictor ranks the units, and only the kept units are computed exactly
(``QK^T`` and ``A V``); pruned entries are ``-inf`` in the row softmax.

Granularities (unit = ``gq`` query rows x ``gk`` key columns):

* ``subvector``: ``v x 1``, the RTSA unit: a sub-vector of ``v`` consecutive queries in one key
  column, i.e. one work item of the PE array (``v`` lanes);
* ``block``: ``v x v`` windows, the coarse SparseViT-style baseline;
* ``element``: ``1 x 1``, the fine baseline.

Predictor (its MACs are counted as performed work). Every granularity gets the same budget of
``N * N * hd / v`` int8 MACs per head, the cost of the sub-vector predictor:

* ``subvector``: pooled queries: the integer mean (half up) of each unit's ``v`` queries times
  every key: ``(N / v) * N * hd`` MACs;
* ``block``: pooled queries times pooled keys: ``(N / v)**2 * hd`` MACs (below the budget);
* ``element``: every query times every key on the ``hd / v`` channels with the largest
  ``mean|Q| * mean|K|`` of the head: ``N * N * hd / v`` MACs.

Keep policy: for each query unit (row of units), keep the ``ceil(rho * units)`` key units with
the highest predicted score (ties to the lower index); ``rho = 1`` is dense. Every query keeps
at least one key, so no softmax row is empty.
"""

from __future__ import annotations


import torch

from golden import contract, qtorch
from golden.intvidt import int_matmul

__all__ = ["GRANULARITIES", "SubvectorAttention", "column_masks"]

GRANULARITIES = ("subvector", "block", "element")


def _pool(x, group):
    """Integer mean (half up) over consecutive groups of ``group`` rows (last one partial)."""
    n = x.shape[-2]
    units = -(-n // group)
    pad = units * group - n
    counts = torch.full((units,), group, dtype=torch.int64)
    counts[-1] -= pad
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    sums = padded.reshape(*x.shape[:-2], units, group, x.shape[-1]).sum(-2)
    return qtorch.div_half_up(sums, counts[:, None])


class SubvectorAttention:
    """Keep policy for :class:`golden.sparse.SparseExecution`.

    Parameters
    ----------
    v : int
        Sub-vector length (the hardware lanes).
    rho : float
        Fraction of key units kept per query unit, in ``(0, 1]``.
    granularity : {"subvector", "block", "element"}
    blocks : collection of int, optional
        Blocks to sparsify (default: all).
    """

    def __init__(self, v, rho, granularity="subvector", blocks=None):
        if not isinstance(v, int) or v < 1:
            raise ValueError("Sub-vector length must be a positive integer, not {!r}".format(v))
        if not 0 < rho <= 1:
            raise ValueError("Keep ratio must be in (0, 1], not {!r}".format(rho))
        if granularity not in GRANULARITIES:
            raise ValueError("Granularity must be one of {}, not {!r}"
                             .format(", ".join(GRANULARITIES), granularity))
        self.v, self.rho, self.granularity = v, rho, granularity
        self.blocks = None if blocks is None else set(blocks)

    def predict(self, q, k):
        """Predicted unit scores ``[B, H, query units, key units]``, unit sizes, MACs."""
        b, h, n, hd = q.shape
        v = self.v
        if self.granularity == "subvector":
            return int_matmul(_pool(q, v), k.transpose(-2, -1)), (v, 1), b * h * -(-n // v) * n * hd
        if self.granularity == "block":
            qp, kp = _pool(q, v), _pool(k, v)
            return int_matmul(qp, kp.transpose(-2, -1)), (v, v), b * h * qp.shape[-2] ** 2 * hd
        c = max(1, hd // v)
        weight = q.abs().sum(-2) * k.abs().sum(-2)                         # [B, H, hd]
        chans = torch.sort(weight, dim=-1, descending=True, stable=True).indices[..., :c]
        idx = chans[:, :, None, :].expand(b, h, n, c)
        qs, ks = q.gather(-1, idx), k.gather(-1, idx)
        return int_matmul(qs, ks.transpose(-2, -1)), (1, 1), b * h * n * n * c

    def keep(self, block, q, k):
        """Bool mask ``[B, H, N, N]`` of the computed score entries, and predictor MACs."""
        if self.blocks is not None and block not in self.blocks:
            return None, 0
        n = q.shape[-2]
        pred, (gq, gk), macs = self.predict(q, k)
        units = pred.shape[-1]
        kept = contract.keep_count(units, self.rho)
        # Stable descending order: ties go to the lower key unit.
        order = torch.sort(pred, dim=-1, descending=True, stable=True).indices[..., :kept]
        unit_mask = torch.zeros_like(pred, dtype=torch.bool).scatter_(-1, order, True)
        mask = unit_mask.repeat_interleave(gq, -2)[..., :n, :].repeat_interleave(gk, -1)[..., :n]
        return mask, macs


def column_masks(mask, v):
    """Per head, per key column, the bitmask of kept sub-vectors (bit ``b`` = queries
    ``b*v .. b*v+v-1``), the input format of the sub-vector mask decoder.

    ``mask`` is ``[N, N]`` (one head); a sub-vector counts as kept if any of its entries is.
    """
    n = mask.shape[0]
    units = -(-n // v)
    padded = torch.nn.functional.pad(mask, (0, 0, 0, units * v - n))
    per_unit = padded.reshape(units, v, n).any(1)                    # [units, N]
    weights = (1 << torch.arange(units, dtype=torch.int64))[:, None]
    # Python ints: a column of more than 63 blocks does not fit an int64 bitmask.
    return [sum(1 << b for b in range(units) if per_unit[b, j]) for j in range(n)] \
        if units > 62 else (per_unit.to(torch.int64) * weights).sum(0).tolist()
