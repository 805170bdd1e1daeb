"""Amaranth lowering of the arithmetic contract (:mod:`golden.contract`).

Each function builds combinational logic that computes exactly what the contract's scalar
function of the same name computes; ``tests/test_contract.py`` checks this exhaustively at small
widths and randomly at full width. :func:`bits_for` and :func:`log2_exact` (elaboration-time
widths, re-exported from the contract) are the exception: they compute on Python ``int``.
"""

from amaranth.hdl import Array, Const, Mux, signed, unsigned

from golden import contract
# Widths of indices: stdlib-only, in the contract, so that hw.config (no Amaranth) uses them too.
from golden.contract import bits_for, log2_exact

__all__ = ["shape_of", "saturate", "round_shift", "round_shift_head", "round_shift_tail",
           "round_saturate_tail",
           "requantize", "requantize_product", "fits",
           "bits_for", "log2_exact", "sum_tree", "popcount", "div_half_up",
           "EXP_BITS", "exp2_neg", "restoring_step", "softmax_prob"]

#: Bits of an :func:`exp2_neg` value: the table's largest entry is ``EXP2_ONE`` (``t = 0``). A
#: right shift by this many bits or more leaves zero, which is the contract's clamp of a huge
#: ``t``.
EXP_BITS = max(contract.EXP2_LUT).bit_length()


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


def _ge_const(value, t):
    """``value >= t`` for a signed ``value`` and a constant ``t``, shallow: a compare of the low
    bits that hold ``t`` and an all-zeros / all-ones test of the rest (a wide compare with a
    constant is a carry chain as long as ``value``)."""
    value = value.as_signed()
    n = len(value)
    k = max(t.bit_length(), (~t).bit_length()) + 1        # t fits k signed bits
    if k >= n:
        return value >= t
    high = value[k - 1:]
    small = (high == 0) | (high == (1 << len(high)) - 1)   # value fits k signed bits
    return Mux(small, value[:k].as_signed() >= t, ~value[n - 1])


def round_saturate_tail(head, zero, fmt):
    """``saturate(round_shift_tail(head, zero), fmt)`` with the range tests on ``head`` itself,
    beside the rounding increment instead of after it: ``(head + 1) >> 1`` passes ``fmt.max``
    exactly when ``head >= 2 max + 1`` and ``fmt.min`` when ``head <= 2 min - 2``, and the
    result's own bits need only the increment of ``head``'s low ``fmt.bits + 1`` bits. In
    series (increment, then two compares of the full width) they were the iCE40 link build's
    critical path after the multiplier left it (36.5 ns)."""
    n = fmt.bits
    head = head.as_signed()
    low = Mux(zero, head[:n], (head[:n + 1] + 1)[1:n + 1])
    over = Mux(zero, _ge_const(head, fmt.max + 1), _ge_const(head, 2 * fmt.max + 1))
    under = Mux(zero, ~_ge_const(head, fmt.min), ~_ge_const(head, 2 * fmt.min - 1))
    bits = Mux(over, fmt.max, Mux(under, fmt.min, low))[:n]
    return bits.as_signed() if fmt.signed else bits


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


def exp2_neg(t):
    """``contract.exp2_neg(t)`` of an unsigned ``t``: the table on its fraction bits, shifted
    right by its integer part (zero from :data:`EXP_BITS` on). ``EXP_BITS`` bits wide."""
    frac = contract.EXP2_FRAC_BITS
    lut = Array(Const(v, EXP_BITS) for v in contract.EXP2_LUT)
    whole = t >> frac
    shamt_bits = (EXP_BITS - 1).bit_length()       # integer parts below the clamp
    return Mux(whole >= EXP_BITS, 0, lut[t[:frac]] >> whole[:shamt_bits])


def restoring_step(rem, divisor):
    """One step of a restoring division whose remaining dividend bits are zero: ``(bit,
    rem')``, the next quotient bit and partial remainder, from ``rem`` (``2 rem`` is tried
    against ``divisor``)."""
    trial = rem << 1
    fit = trial >= divisor
    return fit, Mux(fit, trial - divisor, trial)[:len(rem)]


def softmax_prob(product):
    """The softmax output pass of :func:`golden.contract.softmax_row` on ``product = e *
    recip``: ``PROB.saturate(round_shift(product, SOFTMAX_RECIP_BITS - PROB_FRAC_BITS))``."""
    shift = contract.SOFTMAX_RECIP_BITS - contract.PROB_FRAC_BITS
    return saturate(round_shift(product, Const(shift)), contract.PROB)
