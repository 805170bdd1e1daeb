"""Vectorised PyTorch version of the arithmetic contract (:mod:`golden.contract`).

Everything computes on ``torch.int64`` tensors with the contract's rules: no floats, no
``torch.round`` (which rounds half to even). ``tests/test_contract.py`` checks every function
against the scalar contract.
"""

import torch

from golden import contract

__all__ = ["saturate", "wrap", "round_shift", "requantize", "div_half_up", "isqrt", "exp2_neg",
           "softmax", "layernorm", "gelu"]


def _int64(x):
    x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError("Integer tensor expected, not {}".format(x.dtype))
    return x.to(torch.int64)


def saturate(x, fmt):
    """Clamp into ``fmt``'s range."""
    return _int64(x).clamp(fmt.min, fmt.max)


def wrap(x, fmt):
    """Two's-complement wrap into ``fmt`` (modulo ``2**bits``)."""
    x = _int64(x) & ((1 << fmt.bits) - 1)
    if fmt.signed:
        x = torch.where(x >> (fmt.bits - 1) != 0, x - (1 << fmt.bits), x)
    return x


def round_shift(x, shift):
    """Arithmetic right shift rounding half up; ``shift`` is an int or a tensor."""
    x = _int64(x)
    # (x >> (s - 1) + 1) >> 1 equals floor((x + 2**(s-1)) / 2**s) and needs no wide constant;
    # torch's >> on int64 is arithmetic (a floor division), as the contract requires.
    if isinstance(shift, int):
        if shift < 0:
            raise ValueError("Shift amounts must be non-negative")
        return x if shift == 0 else ((x >> (shift - 1)) + 1) >> 1
    shift = _int64(shift)
    if (shift < 0).any():
        raise ValueError("Shift amounts must be non-negative")
    rounded = ((x >> (shift - 1).clamp(min=0)) + 1) >> 1
    return torch.where(shift == 0, x, rounded)


def requantize(acc, mult, shift, out=contract.ACT):
    """``saturate(round_shift(acc * mult, shift))``; ``mult`` and ``shift`` broadcast."""
    mult, shift = _int64(mult), _int64(shift)
    if ((mult < contract.REQ_MULT.min) | (mult > contract.REQ_MULT.max)).any():
        raise ValueError("Requantisation multiplier outside {}".format(contract.REQ_MULT))
    if ((shift < contract.REQ_SHIFT.min) | (shift > contract.REQ_SHIFT.max)).any():
        raise ValueError("Requantisation shift outside {}".format(contract.REQ_SHIFT))
    return saturate(round_shift(_int64(acc) * mult, shift), out)


def div_half_up(num, den):
    """``num / den`` rounded half up (``den`` positive, broadcast)."""
    num, den = _int64(num), _int64(den)
    if (den <= 0).any():
        raise ValueError("Divisors must be positive")
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def isqrt(v):
    """Exact integer square root (floor) of non-negative int64 values."""
    v = _int64(v)
    if (v < 0).any():
        raise ValueError("isqrt of a negative value")
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    # The float estimate can be off by one either way near perfect squares; correct it.
    r = torch.where(r * r > v, r - 1, r)
    r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def _round_shift_(x, shift):
    """:func:`round_shift` by an int, in place on a fresh int64 tensor ``x``."""
    if shift > 0:
        x >>= shift - 1
        x += 1
        x >>= 1
    return x


# exp2_neg(t) for every t until it reaches 0 (2**15 >> 16 == 0): one gather per element.
_EXP2_ZERO_AT = 16 << contract.EXP2_FRAC_BITS
_EXP2_TABLE = torch.tensor([contract.exp2_neg(t) for t in range(_EXP2_ZERO_AT + 1)],
                           dtype=torch.int64)
assert int(_EXP2_TABLE[-1]) == 0


def _exp2_neg_(t):
    """:func:`exp2_neg` of a fresh, non-negative int64 tensor (clamped in place)."""
    return _EXP2_TABLE[t.clamp_(max=_EXP2_ZERO_AT)]


def exp2_neg(t):
    """Vectorised :func:`golden.contract.exp2_neg`."""
    t = _int64(t)
    if (t < 0).any():
        raise ValueError("exp2_neg needs t >= 0")
    return _exp2_neg_(t.clone())


def softmax(scores, kept, mult, shift):
    """Integer softmax over the last dimension (:func:`golden.contract.softmax_row`).

    ``kept`` is a bool tensor broadcastable to ``scores`` (``None``: everything kept); rows
    with nothing kept give zeros.
    """
    scores = _int64(scores)
    mult, shift = int(mult), int(shift)
    if mult < 0 or shift < 0:
        raise ValueError("Softmax scaling needs mult, shift >= 0")
    # In-place steps on fresh tensors: the score matrices are the largest tensors of the model.
    if kept is None:
        dist = scores.amax(-1, keepdim=True) - scores
    else:
        dropped = ~torch.as_tensor(kept, dtype=torch.bool).expand_as(scores)
        low = torch.iinfo(torch.int64).min
        top = scores.masked_fill(dropped, low).amax(-1, keepdim=True)
        dist = (top - scores).masked_fill_(dropped, 0)
    dist *= mult
    e = _exp2_neg_(_round_shift_(dist, shift))
    if kept is not None:
        e.masked_fill_(dropped, 0)
    total = e.sum(-1, keepdim=True)
    recip = torch.div(1 << contract.SOFTMAX_RECIP_BITS, total.clamp(min=1), rounding_mode="floor")
    # A row with nothing kept has e == 0 everywhere, so its probabilities are 0 as well.
    e *= recip
    return _round_shift_(e, contract.SOFTMAX_RECIP_BITS - contract.PROB_FRAC_BITS).clamp_(
        contract.PROB.min, contract.PROB.max)


def layernorm(x, gamma, beta, mult, shift, out=contract.ACT):
    """Integer LayerNorm over the last dimension (:func:`golden.contract.layernorm_row`)."""
    x = _int64(x)
    d = x.shape[-1]
    c = d * x - x.sum(-1, keepdim=True)
    sigma = isqrt(torch.div((c * c).sum(-1, keepdim=True), d, rounding_mode="floor")).clamp(min=1)
    recip = torch.div(1 << contract.LN_RECIP_BITS, sigma, rounding_mode="floor")
    n = round_shift(c * recip, contract.LN_RECIP_BITS - contract.LN_FRAC_BITS)
    return requantize(_int64(gamma) * n + _int64(beta), mult, shift, out)


def gelu(x, table):
    """Apply a GELU table (:func:`golden.contract.gelu_table`) to int8 values."""
    x = _int64(x)
    if x.numel():
        lo, hi = x.aminmax()
        if int(lo) < contract.ACT.min or int(hi) > contract.ACT.max:
            raise ValueError("GELU table input outside int8")
    return torch.as_tensor(table, dtype=torch.int64)[x - contract.ACT.min]
