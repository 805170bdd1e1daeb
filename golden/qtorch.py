"""Vectorised PyTorch version of the arithmetic contract (:mod:`golden.contract`).

Everything computes on ``torch.int64`` tensors with the contract's rules: no floats, no
``torch.round`` (which rounds half to even). ``tests/test_contract.py`` checks every function
against the scalar contract.
"""

import torch

from golden import contract

__all__ = ["saturate", "wrap", "round_shift", "requantize"]


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
    x, shift = _int64(x), _int64(shift)
    if (shift < 0).any():
        raise ValueError("Shift amounts must be non-negative")
    # (x >> (s - 1) + 1) >> 1 equals floor((x + 2**(s-1)) / 2**s) and needs no wide constant;
    # torch's >> on int64 is arithmetic (a floor division), as the contract requires.
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
