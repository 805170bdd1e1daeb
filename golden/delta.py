"""Inter-frame delta linear projection (RTSA; docs/architecture.md) on the integer model.

Every token-wise linear layer keeps, per spatial position, a reference input ``r`` (int8) and
its output ``y_ref = W r + b`` (accumulator units). For a token ``x`` at that position::

    delta = x - r;  delta~ = delta where |delta| > tau, else 0
    y = y_ref + W delta~;  r <- r + delta~;  y_ref <- y

so ``y == W r + b`` exactly (the reference moves only by what was sent, so the error never
drifts) and only ``nnz(delta~)`` weight columns are touched. A position with no reference
(frame 0, or a token that STA pruning removed so far) is computed densely (its nonzero
elements: :mod:`golden.macs`) and becomes the reference. Tokens are processed frame by frame in frame-major order.

The nonzero ``delta~`` elements are exactly what the hardware bitmap decoder consumes:
:func:`token_streams` turns one into the contract's bitmap and value streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from golden import contract, macs
from golden.blocks import bitmap_token_streams

__all__ = ["DeltaLinear", "LayerCount", "token_streams"]


@dataclass
class LayerCount:
    """MACs of one linear layer: what a dense layer would do, and what was done."""
    dense: int = 0
    performed: int = 0
    tokens: int = 0
    dense_tokens: int = 0
    sent: int = 0           # nonzero delta elements sent (delta tokens only)
    elements: int = 0       # delta elements examined (delta tokens only)
    dense_sent: int = 0     # nonzero elements of the dense tokens (the encoder drops zeros)
    compares: int = 0       # the delta encoder's compares (golden.macs.delta_compares)


@dataclass
class DeltaLinear:
    """Delta state of one linear layer over a batch of clips.

    Parameters
    ----------
    layer : :class:`golden.intvidt.QLinear`
    tau : int
        Threshold in input units (``>= 0``): elements with ``|delta| <= tau`` are not sent;
        ``tau = 0`` sends every changed element, which reproduces the dense layer exactly.
    n_s : int
        Spatial positions per frame (one reference each).
    """
    layer: object
    tau: int
    n_s: int
    count: LayerCount = field(default_factory=LayerCount)
    ref: torch.Tensor | None = None          # [B, n_s, in]
    y_ref: torch.Tensor | None = None        # [B, n_s, out]
    has_ref: torch.Tensor | None = None      # [B, n_s] bool
    last_delta: torch.Tensor | None = None   # [B, tokens, in] delta~ of the last frame (export)

    def __post_init__(self):
        if not isinstance(self.tau, int) or self.tau < 0:
            raise ValueError("Delta threshold must be a non-negative integer, not {!r}"
                             .format(self.tau))

    def _init(self, batch):
        w = self.layer.weight
        self.ref = torch.zeros(batch, self.n_s, w.shape[1], dtype=torch.int64)
        self.y_ref = torch.zeros(batch, self.n_s, w.shape[0], dtype=torch.int64)
        self.has_ref = torch.zeros(batch, self.n_s, dtype=torch.bool)

    def frame(self, x, spatial, valid=None):
        """Accumulators of one frame's tokens.

        Parameters
        ----------
        x : int64 ``[B, T, in]``
            The frame's tokens (``T`` may be below ``n_s`` after token pruning).
        spatial : int64 ``[B, T]``
            Spatial position of each token.
        valid : bool ``[B, T]``, optional
            Which entries are tokens; the others are padding: computed but neither stored nor
            counted, their outputs meaningless. Default: all.

        Returns
        -------
        int64 ``[B, T, out]``: ``W r + b`` with the updated references ``r``.
        """
        if self.ref is None:
            self._init(x.shape[0])
        if valid is None:
            valid = torch.ones(spatial.shape, dtype=torch.bool)
        from golden.intvidt import int_matmul
        b_idx = torch.arange(x.shape[0])[:, None]
        ref = self.ref[b_idx, spatial]
        has = self.has_ref[b_idx, spatial]                          # [B, T]
        delta = x - ref
        send = (delta.abs() > self.tau) & has[..., None]
        delta = torch.where(send, delta, torch.zeros_like(delta))
        if delta.numel() and int(delta.abs().max()) > contract.DELTA.max:
            raise OverflowError("Delta outside {}".format(contract.DELTA))
        dense = ~has
        y_delta = self.y_ref[b_idx, spatial] + int_matmul(delta, self.layer.weight.T)
        y_dense = self.layer.accumulate(x)
        y = torch.where(dense[..., None], y_dense, y_delta)
        new_ref = torch.where(dense[..., None], x, ref + delta)
        at = (b_idx.expand_as(spatial)[valid], spatial[valid])
        self.ref[at] = new_ref[valid]
        self.y_ref[at] = y[valid]
        self.has_ref[at] = True
        self.last_delta = delta
        out_f, in_f = self.layer.weight.shape
        n_dense, n_tok = int((dense & valid).sum()), int(valid.sum())
        sent = int((send & valid[..., None]).sum())
        dense_sent = int(((x != 0) & (dense & valid)[..., None]).sum())
        c = self.count
        c.tokens += n_tok
        c.dense_tokens += n_dense
        c.dense += macs.dense_linear(n_tok, in_f, out_f)
        c.performed += macs.linear(dense_sent + sent, out_f)
        c.sent += sent
        c.elements += (n_tok - n_dense) * in_f
        c.dense_sent += dense_sent
        c.compares += macs.delta_compares(n_tok, in_f)
        return y

    def __call__(self, x, frames, spatial):
        """Accumulators of tokens ``x`` ``[B, N, in]`` in frame-major order; ``frames`` and
        ``spatial`` ``[B, N]`` give each token's frame and position.

        After token pruning the clips of a batch may keep different numbers of tokens of a
        frame; each frame is then processed as a padded ``[B, max count]`` slice.
        """
        out = torch.empty(x.shape[:2] + (self.layer.weight.shape[0],), dtype=torch.int64)
        if frames.shape[0] and torch.equal(frames, frames[:1].expand_as(frames)):
            f = frames[0]
            for value in torch.unique_consecutive(f):
                sel = (f == value).nonzero().flatten()
                out[:, sel] = self.frame(x[:, sel], spatial[:, sel])
            return out
        b_idx = torch.arange(x.shape[0])[:, None]
        for value in torch.unique(frames):
            member = frames == value                                  # [B, N]
            counts = member.sum(1)
            # Members first, in token order (a stable sort of "not a member").
            order = torch.sort((~member).to(torch.int8), dim=1, stable=True).indices
            order = order[:, :int(counts.max())]
            valid = torch.arange(order.shape[1])[None, :] < counts[:, None]
            pos = spatial.gather(1, order)
            y = self.frame(x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])), pos, valid)
            out[b_idx.expand_as(order)[valid], order[valid]] = y[valid]
        return out


def token_streams(config, delta_token):
    """Bitmap and value beats of one token's ``delta~`` (a sequence of ints) for the hardware
    bitmap decoder (:class:`hw.bitmap_decoder.BitmapDecoder`)."""
    return bitmap_token_streams(config, [int(v) for v in delta_token])
