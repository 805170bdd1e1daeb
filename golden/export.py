"""Test-vector export: every integer tensor a hardware layer consumes or produces.

For one clip, one block and a sparsity setting, :func:`export` runs the integer model under a
recording execution and writes, per layer, an ``.npz`` file (int64 arrays) and a
``manifest.json`` that describes them. The co-simulation testbenches load these files with
:func:`load`.

Linear layers (``qkv``, ``proj``, ``fc1``, ``fc2``), tokens ``N`` in frame-major order:

======================  =================  ==================================================
array                   shape              meaning
======================  =================  ==================================================
``x``                   ``[N, in]``        layer input (int8)
``frame``, ``spatial``  ``[N]``            token frame and spatial position
``dense``               ``[N]``            token computed densely (no reference yet)
``delta``               ``[N, in]``        what is sent: Δ~ of a delta token, ``x`` itself
                                           for a dense token (a delta from a zero reference)
``bitmap``              ``[N, in]``        ``delta != 0``: the Δ bitmap; the packed values
                                           are ``delta[bitmap]`` in index order
``base``                ``[N, out]``       accumulator start: ``y_ref`` of the position, or
                                           the bias for a dense token
``acc``                 ``[N, out]``       ``base + W delta``, equal to ``W r + b``
``out``                 ``[N, out]``       ``requantize(acc, mult, shift)``
``weight``              ``[out, in]``      int8 weights
``bias``, ``mult``,     ``[out]``          bias (accumulator units) and per-channel
``shift``                                  requantisation constants
======================  =================  ==================================================

Attention (``attention``), per head ``h`` of ``H``, ``N`` tokens, head dimension ``hd``:
``q``, ``k``, ``v`` ``[H, N, hd]``; ``pred`` ``[H, N / v, N]`` (predicted unit scores; zeros
when attention is dense), ``keep`` ``[H, N, N]``
(computed score entries), ``column_masks`` ``[H, N]`` (bit ``b``: queries ``b*v ..
b*v+v-1`` of that key column are kept; the sub-vector decoder's input), ``scores`` ``[H, N,
N]`` (``q k^T``, pruned entries included), ``probs`` ``[H, N, N]`` (uint8 softmax, 0 where
pruned), ``pv`` ``[H, N, hd]`` (``probs v`` accumulators), ``out`` ``[H, N, hd]`` (int8), and
the scalars ``softmax_mult``, ``softmax_shift``, ``attn_mult``, ``attn_shift``.

Usage::

    python -m golden.export --clip 0 --block 0 --tau 2 --rho 0.5 --out build/vectors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from golden import contract
from golden.sparse import DELTA_LAYERS, SparseExecution
from golden.subvector import SubvectorAttention, column_masks, unit_order

__all__ = ["Recorder", "export", "load", "linear_vectors", "LINEAR_ARRAYS", "ATTENTION_ARRAYS"]

LINEAR_ARRAYS = ("x", "frame", "spatial", "dense", "delta", "bitmap", "base", "acc", "out",
                 "weight", "bias", "mult", "shift")
ATTENTION_ARRAYS = ("q", "k", "v", "pred", "keep", "column_masks", "scores", "probs", "pv",
                    "out", "softmax_mult", "softmax_shift", "attn_mult", "attn_shift")


class Recorder(SparseExecution):
    """A :class:`golden.sparse.SparseExecution` that keeps one block's layer inputs, token
    positions, accumulators and attention intermediates (batch of one clip)."""

    def __init__(self, n_s, block, **kwargs):
        super().__init__(n_s, **kwargs)
        self.block = block
        self.linears = {}
        self.attention_trace = None
        self.attention_tokens = None

    def linear(self, block, name, layer, x, tokens):
        acc = super().linear(block, name, layer, x, tokens)
        if block == self.block and tokens is not None:
            self.linears[name] = dict(layer=layer, x=x[0], frame=tokens.frame[0],
                                      spatial=tokens.spatial[0], acc=acc[0])
        return acc

    def attention_keep(self, block, q, k, tokens=None, scale=None):
        if block == self.block:
            self.attention_tokens = tokens
        return super().attention_keep(block, q, k, tokens, scale)

    def trace(self, block, name, **tensors):
        if block == self.block and name == "attention":
            self.attention_trace = {k: None if t is None else t[0] for k, t in tensors.items()}


def linear_vectors(layer, x, frame, spatial, n_s, tau=None):
    """Vectors (:data:`LINEAR_ARRAYS`) of one linear layer run on the tokens ``x`` ``[N, in]``
    of one clip (frame-major, each position at most once per frame) at delta threshold
    ``tau`` (``None``: every token dense)."""
    from golden.delta import DeltaLinear
    if tau is None:
        acc = layer.accumulate(x)
    else:
        acc = DeltaLinear(layer, tau, n_s)(x[None], frame[None], spatial[None])[0]
    return _replay_linear(dict(layer=layer, x=x, frame=frame, spatial=spatial, acc=acc),
                          tau or 0, n_s, tau is not None)


def _replay_linear(rec, tau, n_s, delta_on):
    """Token by token (an implementation independent of the batched one), rebuild what the
    hardware sees; check it against the recorded accumulators."""
    layer, x, acc = rec["layer"], rec["x"], rec["acc"]
    w = layer.weight
    n, d_in = x.shape
    ref = torch.zeros(n_s, d_in, dtype=torch.int64)
    y_ref = torch.zeros(n_s, w.shape[0], dtype=torch.int64)
    has = torch.zeros(n_s, dtype=torch.bool)
    dense = torch.zeros(n, dtype=torch.bool)
    delta = torch.zeros_like(x)
    base = torch.zeros_like(acc)
    for t in range(n):
        s = int(rec["spatial"][t])
        if not delta_on or not has[s]:
            dense[t] = True
            delta[t], base[t] = x[t], layer.bias
            ref[s] = x[t]
        else:
            dt = x[t] - ref[s]
            dt = torch.where(dt.abs() > tau, dt, torch.zeros_like(dt))
            delta[t], base[t] = dt, y_ref[s]
            ref[s] += dt
        y_ref[s] = base[t] + (w * delta[t]).sum(1)
        has[s] = True
    replayed = base + (delta[:, None, :] * w[None]).sum(-1)
    if not torch.equal(replayed, acc):
        raise AssertionError("replayed delta accumulators differ from the golden model's")
    return dict(x=x, frame=rec["frame"], spatial=rec["spatial"], dense=dense, delta=delta,
                bitmap=delta != 0, base=base, acc=acc, out=layer.requantize(acc),
                weight=w, bias=layer.bias, mult=layer.mult, shift=layer.shift)


def _unit_ordered(trace, tokens, attention, grid_width):
    """The attention trace in the hardware's unit order (:func:`golden.subvector.unit_order`):
    rows of Q, K, V, P V and the output, rows and columns of the keep mask, scores and
    probabilities permuted alike, so that the engine, which takes ``v`` consecutive queries as
    a sub-vector, computes the same thing; and the permutation (``order[i]`` = the model's
    token at position ``i``)."""
    perm = unit_order(attention.order, tokens.frame, tokens.spatial, grid_width)[0]
    out = dict(trace)
    for name in ("q", "k", "v", "pv", "out"):
        out[name] = trace[name][:, perm]
    for name in ("keep", "scores", "probs"):
        if trace[name] is not None:
            out[name] = trace[name][:, perm][:, :, perm]
    return out, perm


def _attention_arrays(trace, blk, v, attention, tokens=None, grid_width=None):
    order = None
    if attention is not None and attention.order != "frame":
        trace, order = _unit_ordered(trace, tokens, attention, grid_width)
    q, k = trace["q"], trace["k"]
    if attention is None:
        pred = torch.zeros(q.shape[0], q.shape[1], k.shape[1], dtype=torch.int64)
        keep = torch.ones_like(pred, dtype=torch.bool)
    else:
        pred = attention.predict(q[None], k[None])[0][0]     # [H, N / v, N]
        keep = trace["keep"]
    masks = torch.tensor([column_masks(keep[h], v) for h in range(keep.shape[0])],
                         dtype=torch.int64)
    arrays = dict(q=q, k=k, v=trace["v"], pred=pred, keep=keep, column_masks=masks,
                  scores=trace["scores"], probs=trace["probs"], pv=trace["pv"],
                  out=trace["out"], softmax_mult=blk.softmax_mult,
                  softmax_shift=blk.softmax_shift, attn_mult=blk.attn_mult,
                  attn_shift=blk.attn_shift)
    if order is not None:
        arrays["order"] = order
    return arrays


@torch.no_grad()
def export(qmodel, clip, block, out: Path, *, tau=None, rho=1.0, v=8, r=0, order="frame",
           layers=DELTA_LAYERS + ("attention",), extra=None) -> dict:
    """Run ``qmodel`` on one uint8 clip ``[1, C, T, H, W]`` and write ``block``'s vectors.

    Parameters
    ----------
    tau : int or None
        Delta threshold of every linear layer (``None``: dense linears; the vectors then have
        every token dense).
    rho : float
        Sub-vector attention keep ratio (``1``: dense attention).
    v : int
        Sub-vector length (hardware lanes).
    r : int
        STA tokens dropped per group and stage (``0``: none).
    order : {"frame", "position"}
        Token order of sub-vector attention (:mod:`golden.subvector`). Other than ``frame``,
        the attention vectors are written in that unit order, with the permutation as
        ``order`` (``order[i]``: the model's token at position ``i``); the RTL then takes them
        as they are.
    extra : dict, optional
        Added to the manifest (e.g. clip index and split).

    Returns
    -------
    The manifest (also written to ``out/manifest.json``).
    """
    from golden.sta import STAPruner
    cfg = qmodel.cfg
    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError("export takes one clip [1, C, T, H, W], not {}".format(tuple(clip.shape)))
    if not 0 <= block < cfg.depth:
        raise ValueError("block must be in [0, {}), not {!r}".format(cfg.depth, block))
    unknown = set(layers) - set(DELTA_LAYERS + ("attention",))
    if unknown:
        raise ValueError("Unknown layers {}".format(sorted(unknown)))
    attention = (SubvectorAttention(v, rho, order=order, grid_width=cfg.width // cfg.patch)
                 if rho < 1 else None)
    pruner = STAPruner(cfg.n_t, cfg.n_s, r, cfg.depth) if r else None
    run = Recorder(cfg.n_s, block, tau=tau, attention=attention, pruner=pruner)
    logits = qmodel(clip, run)
    blk = qmodel.blocks[block]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(block=block, tau=tau, rho=rho, v=v, r=r, order=order, n_s=cfg.n_s,
                    heads=cfg.heads,
                    head_dim=cfg.head_dim, logits=logits[0].tolist(), layers={}, **(extra or {}))
    for name in layers:
        if name == "attention":
            arrays = _attention_arrays(run.attention_trace, blk, v, attention,
                                       run.attention_tokens, cfg.width // cfg.patch)
            fmt = dict(q=contract.ACT, k=contract.ACT, v=contract.ACT, probs=contract.PROB,
                       out=contract.ACT)
        else:
            arrays = _replay_linear(run.linears[name], tau or 0, cfg.n_s, tau is not None)
            fmt = dict(x=contract.ACT, weight=contract.WEIGHT, out=getattr(blk, name).out_fmt)
        np.savez(out / f"{name}.npz", **{k: np.asarray(torch.as_tensor(a).to(torch.int64))
                                         for k, a in arrays.items()})
        manifest["layers"][name] = dict(
            file=f"{name}.npz",
            shapes={k: list(torch.as_tensor(a).shape) for k, a in arrays.items()},
            formats={k: dict(bits=f.bits, signed=f.signed, narrow=f.narrow)
                     for k, f in fmt.items()})
        if name != "attention":
            d = arrays["delta"]
            manifest["layers"][name]["sent"] = int(arrays["bitmap"].sum())
            manifest["layers"][name]["elements"] = d.numel()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load(directory: Path, layer: str) -> dict:
    """Arrays of one exported layer as ``numpy`` int64 arrays (scalars as Python ints)."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    if layer not in manifest["layers"]:
        raise KeyError("No vectors for layer {!r} in {} (have {})"
                       .format(layer, directory, ", ".join(manifest["layers"])))
    with np.load(directory / manifest["layers"][layer]["file"]) as data:
        return {k: (int(a) if a.ndim == 0 else a) for k, a in data.items()}


def main(argv=None):
    from golden import benchmark
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", type=int, default=0, help="index in the held-out split")
    p.add_argument("--split", default=benchmark.EVAL_SPLIT)
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--tau", type=int, default=None, help="delta threshold (default: dense)")
    p.add_argument("--rho", type=float, default=1.0, help="attention keep ratio")
    p.add_argument("--r", type=int, default=0, help="STA tokens dropped per group")
    p.add_argument("--order", default="frame", help="sub-vector token order (frame, position)")
    p.add_argument("--v", type=int, default=None, help="sub-vector length (default preset)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.v is None:
        from hw.config import preset
        args.v = preset("default").lanes
    out = args.out or Path("build/vectors") / f"{args.split}{args.clip}_block{args.block}"
    videos, labels = benchmark.clips(1, args.split, start=args.clip)
    m = export(benchmark.int_model(), videos, args.block, out, tau=args.tau, rho=args.rho,
               v=args.v, r=args.r, order=args.order, extra=dict(clip=args.clip, split=args.split,
                                              label=int(labels[0])))
    for name, info in m["layers"].items():
        print(f"{out / info['file']}: " + ", ".join(f"{k}{tuple(s)}" for k, s in
                                                   info["shapes"].items()))
    return m


if __name__ == "__main__":
    main()
