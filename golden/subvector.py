"""Sub-vector attention sparsity (RTSA; docs/architecture.md) and its granularity baselines.

For one head the score matrix ``S = Q K^T`` (queries in rows, keys in columns) is cut into
*units*; a cheap predictor ranks the units, and only the kept units are computed exactly
(``QK^T`` and ``A V``); pruned entries are ``-inf`` in the row softmax.

Granularities (unit = ``gq`` query rows x ``gk`` key columns, in the *unit order* below):

* ``subvector``: ``v x 1``, the RTSA unit: a sub-vector of ``v`` consecutive queries in one key
  column, i.e. one work item of the PE array (``v`` lanes);
* ``block``: ``v x v`` windows, the coarse SparseViT-style baseline;
* ``element``: ``1 x 1``, the fine baseline.

**Unit order.** Attention is permutation-equivariant, so the order in which the hardware holds
the tokens is free; it decides which ``v`` queries share a sub-vector. ``order="frame"`` is the
model's frame-major raster order (``v`` consecutive queries cross row and frame boundaries of a
7 x 7 frame); ``order="position"`` is position-major: the tokens of one spatial position in
frame order, positions along a serpentine raster, so that a sub-vector holds the same position
across ``v`` frames (``v = n_t``: exactly one position) and neighbouring sub-vectors are
neighbouring positions. Masks are returned in the model's token order either way.

**Predictor** (its MACs are counted as performed work, :mod:`golden.macs`). Every granularity
gets the same budget of ``N * N * hd / v`` int8 MACs per head:

* ``subvector``: pooled queries: the integer mean (half up) of each unit's ``v`` queries times
  every key: ``(N / v) * N * hd`` MACs;
* ``block``: the same pooled products, then the maximum over each key unit's ``v`` keys
  (``(N / v) * N * hd`` MACs, the same budget; the maxima are counted with the selection);
* ``element``: every query times every key on the ``hd / v`` channels with the largest
  ``mean|Q| * mean|K|`` of the head: ``N * N * hd / v`` MACs.

**Keep policy.** ``keep="topk"``: for each query unit (row of units), keep the
``ceil(rho * units)`` key units with the highest predicted score (ties to the lower index);
``rho = 1`` is dense. ``keep="threshold"``: keep the key units whose predicted score is within
``margin`` of the row's best in the softmax's own base-2 exponent (the block's softmax scaling:
a unit predicted below ``2**-margin`` of the row's largest term is dropped), at most
``ceil(rho * units)`` of them (the buffer bound). Every query keeps at least one key, so no
softmax row is empty. The selection costs :func:`golden.macs.topk_compares` over the
predicted scores (for ``block``, over the ``N`` products before the maximum: it bounds both).

``rho`` may be one value or one per block (a sequence or a dict; a block at ``1`` runs dense
attention without a predictor), as the layerwise search chooses.
"""

from __future__ import annotations


import torch

from golden import contract, macs, qtorch
from golden.intvidt import int_matmul

__all__ = ["GRANULARITIES", "ORDERS", "KEEPS", "SubvectorAttention", "unit_order",
           "column_masks"]

GRANULARITIES = ("subvector", "block", "element")
ORDERS = ("frame", "position")
KEEPS = ("topk", "threshold")


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


def _max_pool_columns(x, group):
    """Maximum over consecutive groups of ``group`` columns (last one partial)."""
    n = x.shape[-1]
    units = -(-n // group)
    low = torch.iinfo(torch.int64).min
    padded = torch.nn.functional.pad(x, (0, units * group - n), value=low)
    return padded.reshape(*x.shape[:-1], units, group).amax(-1)


def unit_order(order, frame, spatial, grid_width):
    """Permutation ``[B, N]`` putting the tokens (``frame``, ``spatial`` ``[B, N]``) in unit
    order: token ``perm[b, i]`` of the model's order is the ``i``-th of the hardware's.

    ``position``: by serpentine rank of the position (row ``y``, column ``x`` of a frame
    ``grid_width`` wide: ``y w + x`` on even rows, ``y w + w - 1 - x`` on odd), then by frame.
    """
    if order not in ORDERS:
        raise ValueError("Token order must be one of {}, not {!r}".format(", ".join(ORDERS),
                                                                       order))
    if order == "frame":
        return torch.arange(frame.shape[1]).expand_as(frame)
    y, x = spatial // grid_width, spatial % grid_width
    rank = y * grid_width + torch.where(y % 2 == 0, x, grid_width - 1 - x)
    key = rank * (int(frame.max()) + 1 if frame.numel() else 1) + frame
    return torch.sort(key, dim=1, stable=True).indices


def _per_block(value, name, check):
    if isinstance(value, dict):
        table = dict(value)
    elif isinstance(value, (list, tuple)):
        table = dict(enumerate(value))
    else:
        check(value)
        return lambda block: value
    for v in table.values():
        check(v)
    return lambda block: table.get(block, 1.0 if name == "rho" else None)


class SubvectorAttention:
    """Keep policy for :class:`golden.sparse.SparseExecution`.

    Parameters
    ----------
    v : int
        Sub-vector length (the hardware lanes).
    rho : float, or one per block (sequence or dict)
        Fraction of key units kept per query unit, in ``(0, 1]`` (the cap of ``threshold``).
    granularity : {"subvector", "block", "element"}
    order : {"frame", "position"}
        Unit order of the tokens (see the module docstring).
    keep : {"topk", "threshold"}
    margin : float
        Threshold keep: base-2 exponent below the row's best predicted term (``> 0``).
    grid_width : int
        Tokens per row of a frame (for ``order="position"``).
    blocks : collection of int, optional
        Blocks to sparsify (default: all).
    """

    def __init__(self, v, rho, granularity="subvector", blocks=None, *, order="frame",
                 keep="topk", margin=4.0, grid_width=7):
        if not isinstance(v, int) or v < 1:
            raise ValueError("Sub-vector length must be a positive integer, not {!r}".format(v))

        def check_rho(r):
            if not isinstance(r, (int, float)) or not 0 < r <= 1:
                raise ValueError("Keep ratio must be in (0, 1], not {!r}".format(r))
        self.rho_of = _per_block(rho, "rho", check_rho)
        if granularity not in GRANULARITIES:
            raise ValueError("Granularity must be one of {}, not {!r}"
                             .format(", ".join(GRANULARITIES), granularity))
        if order not in ORDERS:
            raise ValueError("Token order must be one of {}, not {!r}".format(", ".join(ORDERS),
                                                                           order))
        if keep not in KEEPS:
            raise ValueError("Keep policy must be one of {}, not {!r}".format(", ".join(KEEPS),
                                                                           keep))
        if not isinstance(margin, (int, float)) or margin <= 0:
            raise ValueError("Threshold margin must be positive, not {!r}".format(margin))
        if not isinstance(grid_width, int) or grid_width < 1:
            raise ValueError("Grid width must be a positive integer, not {!r}"
                             .format(grid_width))
        self.v, self.rho, self.granularity = v, rho, granularity
        self.order, self.keep_policy, self.margin = order, keep, margin
        self.grid_width = grid_width
        self.blocks = None if blocks is None else set(blocks)

    def predict(self, q, k):
        """Predicted unit scores ``[B, H, query units, key units]`` (in score units), unit
        sizes, predictor MACs; ``q``, ``k`` in unit order."""
        b, h, n, hd = q.shape
        v = self.v
        if self.granularity in ("subvector", "block"):
            pred = int_matmul(_pool(q, v), k.transpose(-2, -1))
            cost = b * h * macs.predictor(-(-n // v), n, hd)
            if self.granularity == "subvector":
                return pred, (v, 1), cost
            return _max_pool_columns(pred, v), (v, v), cost
        c = max(1, hd // v)
        weight = q.abs().sum(-2) * k.abs().sum(-2)                         # [B, H, hd]
        chans = torch.sort(weight, dim=-1, descending=True, stable=True).indices[..., :c]
        idx = chans[:, :, None, :].expand(b, h, n, c)
        qs, ks = q.gather(-1, idx), k.gather(-1, idx)
        return int_matmul(qs, ks.transpose(-2, -1)), (1, 1), b * h * macs.predictor(n, n, c)

    def _unit_mask(self, pred, rho, scale):
        units = pred.shape[-1]
        kept = contract.keep_count(units, rho)
        # Stable descending order: ties go to the lower key unit.
        order = torch.sort(pred, dim=-1, descending=True, stable=True).indices[..., :kept]
        mask = torch.zeros_like(pred, dtype=torch.bool).scatter_(-1, order, True)
        if self.keep_policy == "threshold":
            if scale is None:
                raise ValueError("The threshold keep needs the block's softmax scaling")
            mult, shift = scale
            # In the softmax's fixed-point base-2 exponent, as qtorch.softmax scales S.
            dist = qtorch.round_shift((pred.amax(-1, keepdim=True) - pred) * int(mult),
                                      int(shift))
            mask &= dist <= int(self.margin * (1 << contract.EXP2_FRAC_BITS))
        return mask

    def keep(self, block, q, k, tokens=None, scale=None):
        """Bool mask ``[B, H, N, N]`` of the computed score entries (model token order) and the
        predictor's MACs; ``(None, 0)`` for a dense block (see :meth:`keep_costed`)."""
        mask, predictor_macs, _ = self.keep_costed(block, q, k, tokens, scale)
        return mask, predictor_macs

    def keep_costed(self, block, q, k, tokens=None, scale=None):
        """:meth:`keep` and the keep selection's compares: ``(mask, MACs, compares)``.

        ``tokens`` (:class:`golden.intvidt.Tokens`) places the tokens for ``order="position"``;
        ``scale`` is the block's ``(softmax_mult, softmax_shift)`` for ``keep="threshold"``.
        """
        rho = self.rho_of(block)
        if (self.blocks is not None and block not in self.blocks) or rho >= 1:
            return None, 0, 0
        n = q.shape[-2]
        perm = None
        if self.order != "frame":
            if tokens is None:
                raise ValueError("order={!r} needs the tokens' frames and positions"
                                 .format(self.order))
            perm = unit_order(self.order, tokens.frame, tokens.spatial, self.grid_width)
            idx = perm[:, None, :, None].expand_as(q)
            q, k = q.gather(-2, idx), k.gather(-2, idx)
        pred, (gq, gk), cost = self.predict(q, k)
        unit_mask = self._unit_mask(pred, rho, scale)
        candidates = n if self.granularity == "block" else pred.shape[-1]
        compares = macs.topk_compares(unit_mask[..., 0].numel(), candidates)
        mask = unit_mask.repeat_interleave(gq, -2)[..., :n, :].repeat_interleave(gk, -1)[..., :n]
        if perm is not None:
            inv = torch.argsort(perm, dim=1)[:, None, :].expand(mask.shape[:3])
            mask = mask.gather(-2, inv[..., None].expand_as(mask))
            mask = mask.gather(-1, inv[:, :, None, :].expand_as(mask))
        return mask, cost, compares


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
