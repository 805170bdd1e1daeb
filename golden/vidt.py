"""Float video transformer (VidT) of the benchmark, in PyTorch.

A VideoMAE-style ViT over video (docs/architecture.md): a clip ``[B, C, T, H, W]`` is cut
into tubelets of ``t x p x p`` pixels, each linearly embedded to a token of width ``d``; a
positional embedding is added; ``L`` pre-LayerNorm blocks (multi-head self-attention, residual,
GELU MLP, residual) follow; a final LayerNorm, **mean pooling** over all tokens (there is no CLS
token) and a linear classifier give the logits.

Token order
-----------
Tokens are **frame-major**: token ``i = f * n_s + s`` belongs to token frame ``f`` (``n_t =
T / t`` of them) and spatial position ``s = row * (W / p) + col`` (``n_s`` per frame), so any
``[B, n_t * n_s, d]`` token tensor reshapes to ``[B, n_t, n_s, d]`` without permutation. The
delta projection and token pruning of the accelerator rely on this order.

Tubelet flattening
------------------
:func:`tubelets` turns a clip into ``[B, N, C * t * p * p]`` vectors, each flattened in
``(c, dt, dy, dx)`` order (``dx`` fastest). The embedding is then an ordinary token-wise
:class:`torch.nn.Linear` (equivalent to a ``Conv3d`` with kernel = stride = tubelet), which is
what an integer / hardware implementation needs.

Every layer is a separate module (:class:`TubeletEmbed`, :class:`Attention`, :class:`Mlp`,
:class:`Block`); attention projects ``q, k, v`` with one ``qkv`` linear and exposes its keys
(``return_keys``), the metric of STA token pruning.

One dataflow
------------
The block's dataflow is written once, in :func:`block_dataflow`, parameterised by its ops:
:class:`Block` supplies the float ones, :class:`golden.intvidt.IntBlock` the integer ones (with
the execution hooks of the sparsity techniques). Its ``observe`` hook sees every named tensor
point, which is how :func:`golden.intvidt.calibrate` collects activation ranges from this
forward pass; :meth:`VidT.forward` also takes a token ``prune`` hook (STA,
:func:`golden.sta.forward_float_sta`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VidTConfig", "tubelets", "sincos_pos_embed", "split_heads", "merge_heads", "block_dataflow",
    "TubeletEmbed", "Attention", "Mlp", "Block", "VidT",
]


@dataclass(frozen=True)
class VidTConfig:
    """Shape of a VidT. The defaults are the benchmark model.

    Parameters
    ----------
    frames, height, width, in_chans : int
        Input clip geometry ``[in_chans, frames, height, width]``.
    tubelet : int
        Frames per tubelet ``t`` (``n_t = frames / tubelet``).
    patch : int
        Spatial tubelet size ``p`` (``n_s = (height / p) * (width / p)``).
    dim : int
        Token width ``d``.
    heads : int
        Attention heads (head dim = ``dim / heads``).
    depth : int
        Number of blocks ``L``.
    mlp_ratio : int
        MLP hidden width = ``mlp_ratio * dim``.
    num_classes : int
        Classifier outputs.
    qkv_bias : bool
        Bias on the ``qkv`` projection.
    pos_embed : {"sincos", "learned"}
        Fixed separable 3-D sine-cosine table, or a learned one.
    ln_eps : float
        LayerNorm epsilon.
    input_mean, input_std : float
        Pixels are standardised as ``(x - input_mean) / input_std`` before the embedding (an
        affine map that an integer implementation folds into the embedding weights and bias).
        Centring matters: without it every token carries a large shared DC component.
    """

    frames: int = 16
    height: int = 56
    width: int = 56
    in_chans: int = 1
    tubelet: int = 2
    patch: int = 8
    dim: int = 64
    heads: int = 2
    depth: int = 4
    mlp_ratio: int = 4
    num_classes: int = 16
    qkv_bias: bool = True
    pos_embed: str = "sincos"
    ln_eps: float = 1e-6
    input_mean: float = 0.5
    input_std: float = 0.25

    def __post_init__(self):
        if self.frames % self.tubelet:
            raise ValueError(f"frames={self.frames} is not a multiple of tubelet={self.tubelet}")
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"{self.height}x{self.width} is not a multiple of patch={self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not a multiple of heads={self.heads}")
        if self.input_std <= 0:
            raise ValueError("input_std must be positive")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', not {self.pos_embed!r}")

    @property
    def n_t(self) -> int:
        """Token frames."""
        return self.frames // self.tubelet

    @property
    def grid(self) -> tuple[int, int]:
        """Spatial token grid ``(rows, cols)``."""
        return self.height // self.patch, self.width // self.patch

    @property
    def n_s(self) -> int:
        """Tokens per token frame."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """Tokens per clip, ``n_t * n_s`` (no CLS token)."""
        return self.n_t * self.n_s

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def tubelet_dim(self) -> int:
        """Length of a flattened tubelet, ``in_chans * t * p * p``."""
        return self.in_chans * self.tubelet * self.patch * self.patch

    def to_dict(self) -> dict:
        return asdict(self)


def tubelets(x: torch.Tensor, cfg: VidTConfig) -> torch.Tensor:
    """Cut clips into flattened tubelets in frame-major token order.

    Parameters
    ----------
    x : torch.Tensor
        ``[B, C, T, H, W]``.
    cfg : VidTConfig

    Returns
    -------
    torch.Tensor
        ``[B, n_t * n_s, C * t * p * p]``; token ``f * n_s + row * cols + col``, vector in
        ``(c, dt, dy, dx)`` order.
    """
    b, c = x.shape[:2]
    t, p = cfg.tubelet, cfg.patch
    (rows, cols), n_t = cfg.grid, cfg.n_t
    x = x.reshape(b, c, n_t, t, rows, p, cols, p)
    # -> [B, n_t, rows, cols, C, t, p, p]: token axes first (frame-major), then the vector.
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, n_t * rows * cols, c * t * p * p)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sine-cosine table ``[len(positions), dim]`` (first half sin, second cos)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angle = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], 1)


def sincos_pos_embed(cfg: VidTConfig) -> torch.Tensor:
    """Fixed separable 3-D sine-cosine positional embedding ``[n_t * n_s, d]`` (frame-major).

    The width is split into a temporal part (``d / 4``) and two equal spatial parts (row,
    column), each rounded down to an even size; any remainder is zero.
    """
    d = cfg.dim
    d_t = (d // 4) // 2 * 2
    d_s = ((d - d_t) // 2) // 2 * 2
    rows, cols = cfg.grid
    f, r, c = torch.meshgrid(torch.arange(cfg.n_t), torch.arange(rows), torch.arange(cols),
                             indexing="ij")
    table = torch.zeros(cfg.num_tokens, d, dtype=torch.float64)
    table[:, :d_t] = _sincos_1d(d_t, f.reshape(-1))
    table[:, d_t:d_t + d_s] = _sincos_1d(d_s, r.reshape(-1))
    table[:, d_t + d_s:d_t + 2 * d_s] = _sincos_1d(d_s, c.reshape(-1))
    return table.to(torch.float32)


class TubeletEmbed(nn.Module):
    """Tubelet embedding: :func:`tubelets` then a token-wise linear ``C*t*p*p -> d``."""

    def __init__(self, cfg: VidTConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.tubelet_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, n_t * n_s, d]``."""
        return self.proj(tubelets(x, self.cfg))


def split_heads(qkv: torch.Tensor, heads: int):
    """Fused ``qkv`` projections ``[B, N, 3 d]`` -> ``q, k, v``, each ``[B, heads, N, d /
    heads]``. Features are ordered ``(which in q/k/v, head, head_dim)``, the timm / VideoMAE
    layout, so ``qkv.weight[d:2d]`` are the key weights of heads 0, 1, ..."""
    b, n, width = qkv.shape
    qkv = qkv.reshape(b, n, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def merge_heads(o: torch.Tensor) -> torch.Tensor:
    """Per-head outputs ``[B, heads, N, hd]`` -> tokens ``[B, N, heads * hd]``."""
    b, heads, n, hd = o.shape
    return o.transpose(1, 2).reshape(b, n, heads * hd)


def _unobserved(name, tensor):
    pass


def _at_block(observe, block):
    """A model-level ``observe(block, name, tensor)`` as the block-level ``observe(name,
    tensor)`` of ``block`` (``None`` stays ``None``)."""
    return None if observe is None else partial(observe, block)


def block_dataflow(ops, x, observe=None):
    """The dataflow of one pre-LayerNorm block, written once for the float and integer models.

    ``LN1 -> qkv -> attention -> proj -> +residual -> LN2 -> fc1 -> GELU -> fc2 -> +residual``
    on tokens ``x`` ``[B, N, d]`` (any ``N``: pruning shrinks it). ``ops`` supplies the
    arithmetic: :class:`Block` the float ops, :class:`golden.intvidt.IntBlock` (bound to an
    execution) the integer ones, whose hooks (delta projections in ``linear``, sub-vector
    attention in ``attend``) thus sit at the same points of the same dataflow.

    Parameters
    ----------
    ops : object
        ``heads``; ``norm1(x)``, ``norm2(x)``; ``linear(name, x)`` for the token-wise layers
        ``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``; ``attend(q, k, v) -> [B, heads, N, hd]``
        (softmax attention of the heads); ``residual(x, y)`` (the residual add); ``gelu(h)``.
    x : torch.Tensor
        Block input (the residual stream).
    observe : callable, optional
        ``observe(name, tensor)`` at every named point: ``"ln1"``, ``"q"``, ``"k"``, ``"v"``
        (``[B, heads, N, hd]``), ``"o"`` (merged attention output, the ``proj`` input),
        ``"resid"`` (after the attention residual add), ``"ln2"``, ``"fc1"``, ``"gelu"``,
        ``"resid"`` (the block output). Calibration (:func:`golden.intvidt.calibrate`)
        collects its activation ranges here.

    Returns
    -------
    x : torch.Tensor
        Block output ``[B, N, d]``.
    k : torch.Tensor
        The attention keys ``[B, heads, N, hd]`` (the STA pruning metric).
    """
    see = observe or _unobserved
    a = ops.norm1(x)
    see("ln1", a)
    q, k, v = split_heads(ops.linear("qkv", a), ops.heads)
    see("q", q), see("k", k), see("v", v)
    o = merge_heads(ops.attend(q, k, v))
    see("o", o)
    x = ops.residual(x, ops.linear("proj", o))
    see("resid", x)
    a = ops.norm2(x)
    see("ln2", a)
    h = ops.linear("fc1", a)
    see("fc1", h)
    g = ops.gelu(h)
    see("gelu", g)
    x = ops.residual(x, ops.linear("fc2", g))
    see("resid", x)
    return x, k


class Attention(nn.Module):
    """Parameters of multi-head self-attention: a fused ``qkv`` projection (features in the
    :func:`split_heads` layout) and an output projection ``proj``; :meth:`attend` is the
    softmax attention of the heads. :func:`block_dataflow` runs them."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(hd)) v`` per head, ``[B, heads, N, hd]``."""
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return attn @ v


class Mlp(nn.Module):
    """Parameters of the token-wise MLP ``fc1 -> GELU (exact erf) -> fc2`` (run by
    :func:`block_dataflow`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    The block is the float ``ops`` of :func:`block_dataflow`: ``norm1``, ``norm2``,
    :meth:`linear`, :meth:`attend`, :meth:`residual`, :meth:`gelu`.
    """

    def __init__(self, cfg: VidTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_ratio * cfg.dim)

    @property
    def heads(self) -> int:
        return self.attn.heads

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Token-wise layer ``name`` (``qkv``, ``proj``: attention; ``fc1``, ``fc2``: MLP)."""
        return getattr(self.attn if name in ("qkv", "proj") else self.mlp, name)(x)

    def attend(self, q, k, v):
        return self.attn.attend(q, k, v)

    @staticmethod
    def residual(x, y):
        return x + y

    @staticmethod
    def gelu(h):
        return F.gelu(h)

    def forward(self, x: torch.Tensor, return_keys: bool = False, observe=None):
        """``[B, N, d]`` -> ``[B, N, d]`` (and the attention keys when ``return_keys``);
        ``observe`` as in :func:`block_dataflow`."""
        x, keys = block_dataflow(self, x, observe)
        return (x, keys) if return_keys else x


class VidT(nn.Module):
    """The VidT classifier; see the module docstring.

    Parameters
    ----------
    cfg : VidTConfig
    """

    def __init__(self, cfg: VidTConfig = VidTConfig()):
        super().__init__()
        self.cfg = cfg
        self.embed = TubeletEmbed(cfg)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            # Fixed table kept in the state dict so a checkpoint is self-contained.
            self.register_buffer("pos_embed", sincos_pos_embed(cfg)[None])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.apply(self._init_weights)
        # Small classifier at start, so initial logits are near uniform (loss ~ ln classes).
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module):
        # MAE/VideoMAE convention: xavier-uniform linears, zero biases, unit LayerNorms. (The
        # timm default, normal(std=0.02), is tuned for d = 768; at d = 64 it makes every block
        # nearly the identity and training sits on a long plateau at chance.)
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised, embedded clips plus positional embedding, ``[B, n_t * n_s, d]``."""
        x = (x - self.cfg.input_mean) / self.cfg.input_std
        return self.embed(x) + self.pos_embed

    def head_forward(self, x: torch.Tensor, observe=None) -> torch.Tensor:
        """Final LayerNorm, mean pooling over the tokens present, classifier: ``[B, N, d]`` ->
        ``[B, classes]``; ``observe("norm", LayerNorm output)`` when given."""
        n = self.norm(x)
        if observe is not None:
            observe("norm", n)
        return self.head(n.mean(dim=1))

    def forward(self, x: torch.Tensor, return_keys: bool = False, *, observe=None, prune=None):
        """Classify clips.

        Parameters
        ----------
        x : torch.Tensor
            ``[B, C, T, H, W]`` float clips (the benchmark uses ``[0, 1]`` pixels).
        return_keys : bool
            Also return each block's attention keys.
        observe : callable, optional
            ``observe(block, name, tensor)`` at every named point of the forward pass: block
            ``-1`` ``"resid"`` (the embedded tokens), each block's points of
            :func:`block_dataflow`, block ``depth`` ``"norm"`` (the final LayerNorm output).
        prune : callable, optional
            Token pruning hook ``prune(block, x, keys) -> x`` after every block (e.g.
            :meth:`golden.sta.STAPruner.prune`); the next block and the head see its tokens.

        Returns
        -------
        logits : torch.Tensor
            ``[B, num_classes]``.
        keys : list of torch.Tensor, optional
            One ``[B, heads, N, head_dim]`` tensor per block, when ``return_keys``.
        """
        x = self.tokens(x)
        if observe is not None:
            observe(-1, "resid", x)
        keys = []
        for i, blk in enumerate(self.blocks):
            x, k = blk(x, return_keys=True, observe=_at_block(observe, i))
            if return_keys:
                keys.append(k)
            if prune is not None:
                x = prune(i, x, k)
        logits = self.head_forward(x, _at_block(observe, len(self.blocks)))
        return (logits, keys) if return_keys else logits
