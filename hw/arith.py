"""Amaranth lowering of the arithmetic contract (:mod:`golden.contract`).

Each function builds combinational logic that computes exactly what the contract's scalar
function of the same name computes; ``tests/test_contract.py`` checks this exhaustively at small
widths and randomly at full width. :func:`bits_for` and :func:`log2_exact` (elaboration-time
widths, re-exported from the contract) are the exception: they compute on Python ``int``.
"""

from amaranth.hdl import Mux, signed, unsigned

from golden import contract
# Widths of indices: stdlib-only, in the contract, so that hw.config (no Amaranth) uses them too.
from golden.contract import bits_for, log2_exact

__all__ = ["shape_of", "saturate", "round_shift", "round_shift_head", "round_shift_tail",
           "requantize", "requantize_product", "fits",
           "bits_for", "log2_exact", "sum_tree", "popcount", "div_half_up"]


def shape_of(fmt):
    """Amaranth shape of a :class:`golden.contract.IntFormat`."""
    return signed(fmt.bits) if fmt.signed else unsigned(fmt.bits)


def fits(value, fmt):
    """1 when ``value`` lies inside ``fmt``'s range."""
    return (value >= fmt.min) & (value <= fmt.max)


def saturate(value, fmt):
    """Clamp ``value`` into ``fmt`` (result has ``fmt``'s shape)."""
    clamped = Mux(value > fmt.max, fmt.max, Mux(value < fmt.min, fmt.min, value))
    bits = clamped[:fmt.bits]
    return bits.as_signed() if fmt.signed else bits


def round_shift(value, shift):
    """Arithmetic right shift by the unsigned value ``shift``, rounding half up.

    Computed as ``((value >> (shift - 1)) + 1) >> 1`` for ``shift > 0``, which equals the
    contract's ``floor((value + 2**(shift-1)) / 2**shift)`` without a wide rounding constant.
    """
    shift_m1 = (shift - 1).as_unsigned()[:len(shift)]
    return Mux(shift == 0, value, ((value >> shift_m1) + 1) >> 1)


def round_shift_head(value, shift):
    """First half of :func:`round_shift`, for a pipeline: ``value >> (shift - 1)`` (``value``
    when ``shift`` is 0). :func:`round_shift_tail` of it with ``shift == 0`` is
    ``round_shift(value, shift)``."""
    shift_m1 = (shift - 1).as_unsigned()[:len(shift)]
    return Mux(shift == 0, value, value >> shift_m1)


def round_shift_tail(head, zero):
    """Second half of :func:`round_shift`: ``head`` itself when the shift was ``0`` (``zero``),
    else ``(head + 1) >> 1``."""
    return Mux(zero, head, (head + 1) >> 1)


def requantize_product(product, shift, out=contract.ACT):
    """Second half of :func:`requantize`, for a product ``acc * mult`` computed (and
    registered) beforehand."""
    return saturate(round_shift(product, shift), out)


def requantize(acc, mult, shift, out=contract.ACT):
    """``saturate(round_shift(acc * mult, shift))`` into ``out``."""
    return requantize_product(acc * mult, shift, out)


def sum_tree(terms):
    """The sum of ``terms`` (values), as a balanced adder tree (a chain of hundreds of adders
    is slow to build and to simulate, and a slow path)."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def popcount(value):
    """Set bits of ``value`` (:func:`sum_tree` of its bits)."""
    return sum_tree(value[i] for i in range(len(value)))


def div_half_up(num, den):
    """``contract.div_half_up(num, den)`` in logic: floor division of ``2 num + den`` by
    ``2 den`` (``den >= 1``; a general divider unless ``den`` is constant)."""
    return (num * 2 + den) // (den * 2)
