"""Integer mode of the benchmark VidT: int8 weights and activations, integer nonlinearities.

Everything at inference time is an integer tensor (``torch.int64``) and every rounding,
saturation and nonlinearity comes from :mod:`golden.contract` (through :mod:`golden.qtorch`).
The model is deterministic and bit-exact from run to run; it is the specification the RTL is
compared with.

Data flow of one block (formats in brackets, scales fixed at quantisation time)::

    x [RESID int16] -> LayerNorm -> a [int8] -> qkv -> q, k, v [int8, one scale each]
    S = q k^T [acc] -> softmax -> P [uint8, 2**-8] -> P v [acc] -> o [int8]
    x += proj(o) [requantised into RESID, saturating add]
    x -> LayerNorm -> [int8] -> fc1 -> [int8] -> GELU table -> [int8] -> fc2
    x += fc2(...) [RESID]

The dataflow itself is the float model's (:func:`golden.vidt.block_dataflow`); :class:`IntBlock`
supplies the integer ops, through which the execution hooks (:class:`Execution`) run.

The embedding takes pixels as int8 (``pixel - 128``), its standardisation folded into its
weights and bias; the positional embedding is added in RESID. The head is a final LayerNorm,
an integer mean over tokens (:func:`golden.contract.div_half_up`) and a linear layer whose
accumulators are the logits.

Matrix products run as float64 BLAS calls on integer-valued tensors: every partial sum is an
integer below 2**53, so the result is exact in any summation order (checked by
:func:`int_matmul`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from golden import contract, macs, qtorch
from golden.vidt import VidT, block_dataflow, tubelets

__all__ = ["int_matmul", "attention_core", "QLinear", "QLayerNorm", "IntBlock", "IntVidT",
           "quantize_vidt", "calibrate", "Tokens", "Execution"]

_EXACT = 1 << 53
_EXACT_FLOAT32 = 1 << 24


def _abs_max(t):
    lo, hi = t.aminmax()
    return max(-int(lo), int(hi))


def int_matmul(a, b):
    """Exact ``a @ b`` of int64 tensors.

    Runs as a float BLAS call: float32 when ``max|a| * max|b| * K`` stays below 2**24 (every
    partial sum is then an exactly representable integer, whatever the summation order; int8
    products of the model take this path), float64 below 2**53, an error beyond.
    """
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError("int_matmul takes int64 tensors, not {} and {}".format(a.dtype, b.dtype))
    bound = _abs_max(a) * _abs_max(b) * a.shape[-1] if a.numel() and b.numel() else 0
    if bound >= _EXACT:
        raise OverflowError("Integer matmul bound {} exceeds 2**53".format(bound))
    ftype = torch.float32 if bound < _EXACT_FLOAT32 else torch.float64
    return (a.to(ftype) @ b.to(ftype)).to(torch.int64)


def _to_int(x):
    """Round a float tensor half up (building constants only; never ``torch.round``)."""
    return torch.floor(x.to(torch.float64) + 0.5).to(torch.int64)


def _multipliers(scales):
    """Per-channel ``(mult, shift)`` tensors for real requantisation scales."""
    pairs = [contract.quantize_multiplier(float(s)) for s in torch.as_tensor(scales).flatten()]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.int64),
            torch.tensor([p[1] for p in pairs], dtype=torch.int64))


@dataclass
class QLinear:
    """Integer token-wise linear layer ``y = requantize(W x + b)``.

    Attributes
    ----------
    weight : int64 ``[out, in]`` in :data:`golden.contract.WEIGHT`.
    bias : int64 ``[out]`` in accumulator units (input scale times weight scale).
    mult, shift : int64 ``[out]`` per-output-channel requantisation constants.
    out_fmt : :class:`golden.contract.IntFormat` of the requantised output.
    """
    weight: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: torch.Tensor
    out_fmt: contract.IntFormat

    @classmethod
    def from_float(cls, linear_w, linear_b, in_scale, out_scales, out_fmt=contract.ACT):
        w = linear_w.detach().to(torch.float64)
        w_scale = float(w.abs().max()) / contract.WEIGHT.max or 1.0
        weight = _to_int(w / w_scale).clamp(contract.WEIGHT.min, contract.WEIGHT.max)
        acc_scale = in_scale * w_scale
        b = linear_b.detach().to(torch.float64) if linear_b is not None else torch.zeros(w.shape[0])
        bias = _to_int(b / acc_scale)
        out_scales = torch.as_tensor(out_scales, dtype=torch.float64).expand(w.shape[0])
        mult, shift = _multipliers(acc_scale / out_scales)
        return cls(weight, bias, mult, shift, out_fmt)

    def accumulate(self, x):
        """``W x + b`` in accumulator units, for ``x`` ``[..., in]``."""
        return int_matmul(x, self.weight.T) + self.bias

    def requantize(self, acc):
        return qtorch.requantize(acc, self.mult, self.shift, self.out_fmt)

    def __call__(self, x):
        return self.requantize(self.accumulate(x))

    @property
    def macs_per_token(self):
        return self.weight.numel()


@dataclass
class QLayerNorm:
    """Integer LayerNorm (:func:`golden.contract.layernorm_row`) with int8 ``gamma``."""
    gamma: torch.Tensor
    beta: torch.Tensor
    mult: int
    shift: int

    @classmethod
    def from_float(cls, ln, out_scale):
        g = ln.weight.detach().to(torch.float64)
        g_scale = float(g.abs().max()) / contract.WEIGHT.max or 1.0
        gamma = _to_int(g / g_scale).clamp(contract.WEIGHT.min, contract.WEIGHT.max)
        unit = g_scale * 2.0 ** -contract.LN_FRAC_BITS
        beta = _to_int(ln.bias.detach().to(torch.float64) / unit)
        beta = beta.clamp(contract.LN_BETA.min, contract.LN_BETA.max)
        mult, shift = contract.quantize_multiplier(unit / out_scale)
        return cls(gamma, beta, mult, shift)

    def __call__(self, x):
        return qtorch.layernorm(x, self.gamma, self.beta, self.mult, self.shift)


@dataclass
class Tokens:
    """Where the tokens of a ``[B, N, d]`` tensor come from: frame and spatial position of
    each (``[B, N]`` int64; frame-major, equal frames contiguous)."""
    frame: torch.Tensor
    spatial: torch.Tensor

    @classmethod
    def full(cls, batch, n_t, n_s):
        i = torch.arange(n_t * n_s).expand(batch, -1)
        return cls(i // n_s, i % n_s)


class Execution:
    """How the integer model runs its layers, and the MACs it performs.

    This base class runs everything densely. Sparse executions (delta projections,
    sub-vector attention, token pruning: :mod:`golden.sparse`) override :meth:`linear`,
    :meth:`attention_keep` and :meth:`prune`.

    Attributes
    ----------
    macs : dict
        ``(block, layer) -> golden.delta.LayerCount`` with ``dense`` and ``performed`` MACs;
        block ``-1`` is the embedding and ``L`` the head.
    """

    def __init__(self):
        from golden.delta import LayerCount
        self._count = LayerCount
        self.macs = {}

    def count(self, block, layer, dense, performed):
        c = self.macs.setdefault((block, layer), self._count())
        c.dense += dense
        c.performed += performed

    def linear(self, block, name, layer, x, tokens):
        """Accumulators ``W x + b`` of a token-wise layer."""
        out_f, in_f = layer.weight.shape
        n = macs.dense_linear(x.shape[0] * x.shape[1], in_f, out_f)
        self.count(block, name, n, n)
        return layer.accumulate(x)

    def attention_keep(self, block, q, k, tokens=None, scale=None):
        """Mask of the score entries to compute (``None``: all); ``tokens`` place the
        tokens, ``scale`` is the block's softmax ``(mult, shift)``."""
        return None

    def prune(self, block, x, keys, tokens):
        """Tokens after ``block`` (token pruning)."""
        return x, tokens

    def trace(self, block, name, **tensors):
        """Intermediate tensors of ``block``'s ``name`` stage (ignored here; recorded by
        :class:`golden.export.Recorder` for test vectors)."""

    def totals(self):
        dense = sum(c.dense for c in self.macs.values())
        performed = sum(c.performed for c in self.macs.values())
        return dense, performed


def attention_core(q, k, v, keep, softmax_mult, softmax_shift, attn_mult, attn_shift):
    """Integer attention of one or more heads (``q``, ``k``, ``v`` ``[..., N, hd]`` int8):
    ``S = q k^T``, ``P = softmax(S)`` over the ``keep`` entries (``None``: all), ``pv = P v``,
    ``out = requantize(pv)``. Returns ``(S, P, pv, out)``; what the attention engine computes."""
    scores = int_matmul(q, k.transpose(-2, -1))
    p = qtorch.softmax(scores, keep, softmax_mult, softmax_shift)
    pv = int_matmul(p, v)
    return scores, p, pv, qtorch.requantize(pv, attn_mult, attn_shift, contract.ACT)


@dataclass
class IntBlock:
    """One integer transformer block (see the module docstring); :meth:`forward` runs
    :func:`golden.vidt.block_dataflow` with the integer ops of :class:`_IntOps`."""
    norm1: QLayerNorm
    qkv: QLinear
    softmax_mult: int
    softmax_shift: int
    attn_mult: int          # P v (units s_v * 2**-8) -> o (int8)
    attn_shift: int
    proj: QLinear
    norm2: QLayerNorm
    fc1: QLinear
    gelu: tuple
    fc2: QLinear
    heads: int

    def forward(self, x, run, index, tokens):
        """RESID tokens ``x`` ``[B, N, d]`` of block ``index`` under execution ``run`` ->
        ``(x [B, N, d] RESID, k [B, heads, N, head_dim] int8)``."""
        return block_dataflow(_IntOps(self, run, index, tokens), x)


class _IntOps:
    """The integer ops of :func:`golden.vidt.block_dataflow` for one block under an execution:
    every token-wise layer runs through ``run.linear`` (delta projections) and is requantised
    into its output format, attention through ``run.attention_keep`` (sub-vector sparsity) and
    :func:`attention_core`, and the residual adds saturate into RESID."""

    def __init__(self, blk, run, index, tokens):
        self.blk, self.run, self.index, self.tokens = blk, run, index, tokens
        self.heads, self.norm1, self.norm2 = blk.heads, blk.norm1, blk.norm2

    def linear(self, name, x):
        layer = getattr(self.blk, name)
        return layer.requantize(self.run.linear(self.index, name, layer, x, self.tokens))

    def attend(self, q, k, v):
        blk, run, index = self.blk, self.run, self.index
        b, heads, n, hd = q.shape
        keep = run.attention_keep(index, q, k, self.tokens, (blk.softmax_mult,
                                                              blk.softmax_shift))
        computed = b * heads * n * n if keep is None else int(keep.sum())
        # golden.macs.attention: Q K^T and A V, head_dim MACs per computed entry each.
        dense, performed = macs.dense_attention(n, heads, hd) * b, macs.attention(computed, hd)
        run.count(index, "qk", dense // 2, performed // 2)
        run.count(index, "av", dense // 2, performed // 2)
        scores, p, pv, o = attention_core(q, k, v, keep, blk.softmax_mult, blk.softmax_shift,
                                          blk.attn_mult, blk.attn_shift)
        run.trace(index, "attention", q=q, k=k, v=v, keep=keep, scores=scores, probs=p, pv=pv,
                  out=o)
        return o

    @staticmethod
    def residual(x, y):
        return qtorch.saturate(x + y, contract.RESID)

    def gelu(self, h):
        return qtorch.gelu(h, self.blk.gelu)


class IntVidT:
    """Integer VidT built by :func:`quantize_vidt`; ``forward`` takes uint8 clips."""

    def __init__(self, cfg, embed, pos, blocks, norm, head, scales):
        self.cfg, self.embed, self.pos, self.blocks = cfg, embed, pos, blocks
        self.norm, self.head, self.scales = norm, head, scales

    def tokens(self, videos, run=None):
        """uint8 clips ``[B, C, T, H, W]`` -> RESID tokens ``[B, N, d]``."""
        if videos.dtype != torch.uint8:
            raise TypeError("IntVidT takes uint8 clips, not {}".format(videos.dtype))
        x = tubelets(videos.to(torch.int64) - 128, self.cfg)
        acc = (run or Execution()).linear(-1, "embed", self.embed, x, None)
        return qtorch.saturate(self.embed.requantize(acc) + self.pos, contract.RESID)

    def head_forward(self, x, run=None):
        """Final LayerNorm, integer mean over the tokens present, classifier accumulators."""
        n = self.norm(x)
        pooled = qtorch.div_half_up(n.sum(1), x.shape[1])
        return (run or Execution()).linear(len(self.blocks), "head", self.head, pooled[:, None],
                                           None)[:, 0]

    def forward(self, videos, run=None):
        """Logits (classifier accumulators, int64) of uint8 clips under execution ``run``
        (dense when ``None``); ``run.macs`` holds the MAC accounting afterwards."""
        run = run or Execution()
        x = self.tokens(videos, run)
        tokens = Tokens.full(x.shape[0], self.cfg.n_t, self.cfg.n_s)
        for i, blk in enumerate(self.blocks):
            x, k = blk.forward(x, run, i, tokens)
            x, tokens = run.prune(i, x, k, tokens)
        return self.head_forward(x, run)

    __call__ = forward


def _float_sites(model, videos):
    """Float activations at every quantisation site (for calibration), collected by the
    ``observe`` hook of the float forward pass: ``"resid"`` (every residual-stream point, the
    embedded tokens included), ``"{block}.{name}"`` for each block's other points
    (:func:`golden.vidt.block_dataflow`) and ``"norm"`` (the final LayerNorm output)."""
    sites = {}

    def observe(block, name, t):
        key = name if name in ("resid", "norm") else f"{block}.{name}"
        sites.setdefault(key, []).append(t.detach())
    model(videos, observe=observe)
    return sites


@torch.no_grad()
def calibrate(model, videos, *, quantile=0.9999, batch=32):
    """Activation scales from float activations on calibration clips.

    int8 sites use the ``quantile`` of ``|x|`` (clipping rare outliers buys resolution); the
    residual stream uses its maximum (int16 has room to spare).
    """
    from golden.dataset import to_float
    sites = {}
    for i in range(0, len(videos), batch):
        for name, ts in _float_sites(model, to_float(videos[i:i + batch])).items():
            sites.setdefault(name, []).extend(ts)
    scales = {}
    for name, ts in sites.items():
        flat = torch.cat([t.abs().flatten() for t in ts]).to(torch.float64)
        if name == "resid":
            scales[name] = float(flat.max()) / contract.RESID.max
        else:
            sample = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))
                          [:1 << 22]] if len(flat) > 1 << 22 else flat
            scales[name] = float(torch.quantile(sample, quantile)) / contract.ACT.max
        scales[name] = scales[name] or 1.0
    return scales


@torch.no_grad()
def quantize_vidt(model: VidT, calib_videos):
    """Build the integer model from a trained float model and uint8 calibration clips."""
    cfg = model.cfg
    s = calibrate(model, calib_videos)
    s_res = s["resid"]
    # Embedding: pixels enter as q = p - 128 (scale 1); fold p/255 and the standardisation.
    w = model.embed.proj.weight.to(torch.float64) / (255.0 * cfg.input_std)
    b = (model.embed.proj.bias.to(torch.float64)
         + model.embed.proj.weight.to(torch.float64).sum(1)
         * (128.0 / 255.0 - cfg.input_mean) / cfg.input_std)
    embed = QLinear.from_float(w, b, 1.0, s_res, contract.RESID)
    pos = qtorch.saturate(_to_int(model.pos_embed[0].to(torch.float64) / s_res), contract.RESID)
    blocks = []
    hd = cfg.dim // cfg.heads
    log2e = 1.0 / math.log(2.0)
    for i, blk in enumerate(model.blocks):
        sq, sk, sv = s[f"{i}.q"], s[f"{i}.k"], s[f"{i}.v"]
        qkv_scales = torch.tensor([sq] * cfg.dim + [sk] * cfg.dim + [sv] * cfg.dim)
        sm_mult, sm_shift = contract.quantize_multiplier(
            sq * sk * hd ** -0.5 * log2e * 2 ** contract.EXP2_FRAC_BITS)
        at_mult, at_shift = contract.quantize_multiplier(
            sv * 2.0 ** -contract.PROB_FRAC_BITS / s[f"{i}.o"])
        blocks.append(IntBlock(
            norm1=QLayerNorm.from_float(blk.norm1, s[f"{i}.ln1"]),
            qkv=QLinear.from_float(blk.attn.qkv.weight, blk.attn.qkv.bias, s[f"{i}.ln1"],
                                   qkv_scales),
            softmax_mult=sm_mult, softmax_shift=sm_shift, attn_mult=at_mult, attn_shift=at_shift,
            proj=QLinear.from_float(blk.attn.proj.weight, blk.attn.proj.bias, s[f"{i}.o"],
                                    s_res, contract.RESID),
            norm2=QLayerNorm.from_float(blk.norm2, s[f"{i}.ln2"]),
            fc1=QLinear.from_float(blk.mlp.fc1.weight, blk.mlp.fc1.bias, s[f"{i}.ln2"],
                                   s[f"{i}.fc1"]),
            gelu=contract.gelu_table(s[f"{i}.fc1"], s[f"{i}.gelu"]),
            fc2=QLinear.from_float(blk.mlp.fc2.weight, blk.mlp.fc2.bias, s[f"{i}.gelu"],
                                   s_res, contract.RESID),
            heads=cfg.heads))
    norm = QLayerNorm.from_float(model.norm, s["norm"])
    head = QLinear.from_float(model.head.weight, model.head.bias, s["norm"], 1.0,
                              contract.IntFormat(32))
    return IntVidT(cfg, embed, pos, blocks, norm, head, s)
