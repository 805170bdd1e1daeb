"""Arithmetic contract of the RTSA accelerator: the one source of truth for numbers.

Every number format, rounding rule, saturation and overflow rule, requantisation constant and
sparse stream format of the project is defined here, once. This module is **stdlib-only** and is
itself the *scalar Python reference* of the contract (it computes on Python ``int``); the two
other implementations derive from it and are tested against it:

* :mod:`golden.qtorch` — the vectorised PyTorch version, used by the golden model;
* :mod:`hw.arith` — the Amaranth lowering, used by the generated RTL.

Rules
-----
* **Formats.** Two's-complement integers described by :class:`IntFormat`. Activations are int8
  ``[-128, 127]``; weights are *narrow* (symmetric) int8 ``[-127, 127]`` so that negating a
  weight never overflows; inter-frame deltas of int8 activations are int9 ``[-255, 255]``.
  Every multiplier input of the PE array is :data:`PE_OPERAND` (int9), wide enough for any of
  the operand formats (activation, weight, delta, probability).
* **Accumulation.** Accumulators are signed and sized by :func:`accumulator_format` so that no
  reduction up to the configured length can overflow. Arithmetic beyond that wraps modulo
  ``2**bits`` (:meth:`IntFormat.wrap`); the hardware raises an overflow flag when it happens.
* **Rounding.** One rule everywhere: *round half up* (towards +inf) on a right shift,
  ``round_shift(x, s) = floor((x + 2**(s-1)) / 2**s)``, which is what an adder and an
  arithmetic shifter compute. Nothing in the project rounds half-to-even.
* **Requantisation.** ``requantize(acc, mult, shift) = saturate(round_shift(acc * mult, shift))``
  with an unsigned 16-bit multiplier and a 6-bit shift (:data:`REQ_MULT`, :data:`REQ_SHIFT`);
  real scales are turned into ``(mult, shift)`` by :func:`quantize_multiplier`.
* **Saturation.** Results are clamped to the output format (never wrapped).
"""

from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "IntFormat", "ACT", "WEIGHT", "DELTA", "PROB", "PE_OPERAND", "REQ_MULT", "REQ_SHIFT",
    "ROUNDING", "ceil_log2", "product_format", "accumulator_format", "linear_reduction_terms",
    "round_shift", "requantize", "quantize_multiplier",
    "pack_bitmap", "unpack_bitmap", "pack_values", "bitmap_words",
]


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement (or unsigned) integer format.

    Parameters
    ----------
    bits : int
        Total width in bits, sign bit included.
    signed : bool
        Two's complement when true, unsigned otherwise.
    narrow : bool
        Symmetric range: the most negative code is excluded (``[-(2**(bits-1) - 1), ...]``).
    """
    bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or self.bits < (2 if self.signed else 1):
            raise ValueError("IntFormat bits must be an integer >= {}, not {!r}"
                             .format(2 if self.signed else 1, self.bits))
        if self.narrow and not self.signed:
            raise ValueError("Only a signed IntFormat can be narrow")

    @property
    def min(self):
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def max(self):
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def contains(self, x):
        return self.min <= x <= self.max

    def saturate(self, x):
        """Clamp ``x`` into the format's range."""
        return self.max if x > self.max else self.min if x < self.min else x

    def wrap(self, x):
        """Reduce ``x`` modulo ``2**bits`` into the format (two's-complement overflow)."""
        x &= (1 << self.bits) - 1
        if self.signed and x >> (self.bits - 1):
            x -= 1 << self.bits
        return x

    def check(self, x, what="value"):
        """Return ``x`` if it fits the format, raise :exc:`ValueError` otherwise."""
        if not isinstance(x, int) or not self.contains(x):
            raise ValueError("{} must be an integer in [{}, {}], not {!r}"
                             .format(what, self.min, self.max, x))
        return x


#: int8 activations (symmetric quantisation, zero point 0).
ACT = IntFormat(8)
#: int8 weights, narrow range so that ``-w`` is representable.
WEIGHT = IntFormat(8, narrow=True)
#: Inter-frame delta ``x - r`` of two activations.
DELTA = IntFormat(9)
#: Softmax probabilities (unsigned; their scale is set by the softmax definition).
PROB = IntFormat(8, signed=False)
#: Every multiplier input of the PE array: holds ACT, WEIGHT, DELTA and PROB values.
PE_OPERAND = IntFormat(9)
#: Requantisation multiplier (unsigned fixed point, see :func:`quantize_multiplier`).
REQ_MULT = IntFormat(16, signed=False)
#: Requantisation right shift amount.
REQ_SHIFT = IntFormat(6, signed=False)
#: Name of the one rounding rule of the project.
ROUNDING = "half-up"

for _fmt in (ACT, WEIGHT, DELTA, PROB):
    assert PE_OPERAND.contains(_fmt.min) and PE_OPERAND.contains(_fmt.max)


def ceil_log2(n):
    """Smallest ``b`` with ``2**b >= n`` (``n >= 1``)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError("ceil_log2 needs a positive integer, not {!r}".format(n))
    return (n - 1).bit_length()


def product_format(a, b):
    """Format that holds every product of a value of ``a`` and a value of ``b``."""
    return IntFormat(a.bits + b.bits, signed=a.signed or b.signed)


def accumulator_format(a, b, terms):
    """Signed accumulator that holds any sum of ``terms`` products of ``a`` and ``b`` values."""
    p = product_format(a, b)
    return IntFormat(p.bits + ceil_log2(terms) + (0 if p.signed else 1))


def linear_reduction_terms(k):
    """Longest sum an accumulator sees in a delta linear projection of input width ``k``.

    The output ``y = y_ref + W @ delta`` holds a reference result (``k`` products plus a bias,
    counted as one more term) to which up to ``k`` delta products are added.
    """
    return 2 * k + 1


def round_shift(x, shift):
    """Arithmetic right shift by ``shift`` bits, rounding half up (towards +inf)."""
    if shift < 0:
        raise ValueError("Shift amount must be non-negative, not {!r}".format(shift))
    if shift == 0:
        return x
    # Python's >> on int is a floor division by 2**shift, for negative values too.
    return (x + (1 << (shift - 1))) >> shift


def requantize(acc, mult, shift, out=ACT):
    """Requantise an accumulator: ``saturate(round_shift(acc * mult, shift))``."""
    REQ_MULT.check(mult, "Requantisation multiplier")
    REQ_SHIFT.check(shift, "Requantisation shift")
    return out.saturate(round_shift(acc * mult, shift))


def quantize_multiplier(scale):
    """Best ``(mult, shift)`` with ``mult / 2**shift`` close to a real ``scale > 0``.

    ``mult`` is normalised into ``[2**15, 2**16)`` when the shift range allows it, and rounded
    half up from the exact binary value of ``scale`` (no float rounding on the way).
    """
    s = Fraction(scale)
    if s <= 0:
        raise ValueError("Requantisation scale must be positive, not {!r}".format(scale))
    top = REQ_MULT.max + 1                      # 2**16
    shift = 0
    while s * (1 << shift) < top // 2 and shift < REQ_SHIFT.max:
        shift += 1
    while s * (1 << shift) >= top and shift > 0:
        shift -= 1
    scaled = s * (1 << shift)
    mult = int((scaled + Fraction(1, 2)) // 1)   # half up
    if mult == top:
        if shift == 0:
            raise ValueError("Requantisation scale {!r} is too large".format(scale))
        mult, shift = top // 2, shift - 1
    if mult >= top:
        raise ValueError("Requantisation scale {!r} is too large".format(scale))
    return mult, shift


# --- Sparse stream formats ------------------------------------------------------------------
#
# A token's delta bitmap is sent as ``ceil(d / word_bits)`` words, element ``i`` in bit
# ``i % word_bits`` of word ``i // word_bits`` (LSB first); bits beyond ``d`` are zero. The
# nonzero values follow in a separate stream, in element order, ``k`` per beat; the last beat
# is padded with zeros; a token with no nonzero element sends no value beat.

def bitmap_words(length, word_bits):
    """Number of bitmap words of a token of ``length`` elements."""
    return max(1, -(-length // word_bits))


def pack_bitmap(bits, word_bits):
    """Pack a sequence of truth values into bitmap words (LSB first)."""
    words = [0] * bitmap_words(len(bits), word_bits)
    for i, b in enumerate(bits):
        if b:
            words[i // word_bits] |= 1 << (i % word_bits)
    return words


def unpack_bitmap(words, length, word_bits):
    """Inverse of :func:`pack_bitmap`."""
    return [bool((words[i // word_bits] >> (i % word_bits)) & 1) for i in range(length)]


def pack_values(values, k):
    """Split nonzero values into beats of ``k``, zero padding the last one."""
    values = list(values)
    beats = [values[i:i + k] for i in range(0, len(values), k)]
    if beats:
        beats[-1] = beats[-1] + [0] * (k - len(beats[-1]))
    return beats
