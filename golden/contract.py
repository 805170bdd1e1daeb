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
* **Nonlinearities** (integer, see the section at the end): softmax by a shift-based ``exp2``
  with a 64-entry table and an integer reciprocal; LayerNorm by integer mean, integer square
  root and reciprocal; GELU by a 256-entry int8 -> int8 table built from the layer's scales.
"""

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "IntFormat", "ACT", "WEIGHT", "DELTA", "PROB", "PE_OPERAND", "REQ_MULT", "REQ_SHIFT",
    "ROUNDING", "ceil_log2", "bits_for", "log2_exact", "PERoute", "product_format",
    "accumulator_format", "linear_reduction_terms", "round_shift", "requantize",
    "quantize_multiplier", "pack_bitmap", "unpack_bitmap", "pack_values", "bitmap_words",
    "RESID", "EXP2_FRAC_BITS", "EXP2_LUT", "EXP2_ONE", "SOFTMAX_RECIP_BITS",
    "SOFTMAX_RECIP_QUOTIENT_BITS", "PROB_FRAC_BITS",
    "LN_FRAC_BITS", "LN_RECIP_BITS", "LN_BETA", "div_half_up", "exp2_neg", "softmax_row",
    "layernorm_row", "gelu_table", "real_to_int", "pooled_sum_format", "predictor_score_format",
    "sta_key_sum_format", "sta_activation_format",
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


def bits_for(count):
    """Bits of an unsigned index ``0 .. count - 1``, at least 1: ``max(1, ceil_log2(count))``.

    ``count >= 1``; a one-value index still gets a (constant zero) bit, so that every port and
    register field exists.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("bits_for needs a positive integer count, not {!r}".format(count))
    return max(1, ceil_log2(count))


def log2_exact(n):
    """``b`` with ``2**b == n``, for a power of two ``n >= 1``; :exc:`ValueError` otherwise."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n & (n - 1):
        raise ValueError("log2_exact needs a positive power of two, not {!r}".format(n))
    return n.bit_length() - 1


class PERoute(enum.IntEnum):
    """Codes of the PE array's operand routes (``route`` of an input beat).

    :class:`hw.pe_array.Route` takes its values from here; the reference models and the
    testbenches use these codes.
    """
    #: ``scalar[0]`` to every row, ``vector[r]`` to row ``r`` (linear projection).
    SHARED_SCALAR = 0
    #: ``vector[0]`` to every row, ``scalar[r]`` to row ``r`` (attention QK^T and A.V).
    SHARED_VECTOR = 1
    #: ``scalar[r]`` and ``vector[r]`` to row ``r``.
    PER_ROW = 2


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


# --- Integer nonlinearities -----------------------------------------------------------------

#: Residual stream of the integer model (wider than activations so that sums keep precision).
RESID = IntFormat(16)
#: Fractional bits of the softmax exponent (``t`` in units of ``2**-EXP2_FRAC_BITS``).
EXP2_FRAC_BITS = 6
#: ``2**-f`` for ``f = i / 64``, in units of ``2**-15`` (``EXP2_ONE`` = 1.0), rounded half up.
EXP2_ONE = 1 << 15
EXP2_LUT = tuple(math.floor(EXP2_ONE * 2.0 ** (-i / (1 << EXP2_FRAC_BITS)) + 0.5)
                 for i in range(1 << EXP2_FRAC_BITS))
#: Bits of the softmax row reciprocal ``floor(2**SOFTMAX_RECIP_BITS / sum)``.
SOFTMAX_RECIP_BITS = 31
#: Quotient bits of that reciprocal: a row with a kept entry has ``e = EXP2_LUT[0]`` at its
#: maximum, so ``sum >= EXP2_LUT[0]`` bounds the quotient (and a divider's iterations).
SOFTMAX_RECIP_QUOTIENT_BITS = ((1 << SOFTMAX_RECIP_BITS) // EXP2_LUT[0]).bit_length()
#: Softmax probabilities are :data:`PROB` in units of ``2**-PROB_FRAC_BITS``.
PROB_FRAC_BITS = 8
#: LayerNorm normalised values in units of ``2**-LN_FRAC_BITS``.
LN_FRAC_BITS = 6
#: Bits of the LayerNorm reciprocal ``floor(2**LN_RECIP_BITS / (d * sigma))``.
LN_RECIP_BITS = 31
#: LayerNorm offsets ``beta`` (units of ``gamma``'s scale times ``2**-LN_FRAC_BITS``); the
#: benchmark model's largest is 1256, so int16 leaves 26x headroom (the quantiser clamps).
LN_BETA = IntFormat(16)


def layernorm_widths(max_d):
    """Bit widths of LayerNorm's statistics for tokens of up to ``max_d`` RESID values:
    ``{"total", "sumsq", "var", "root", "recip", "centred"}`` (signed: total, centred)."""
    d = max_d
    x = -RESID.min                            # largest |x|
    return {"total": (d * x).bit_length() + 1, "sumsq": (d * x * x).bit_length(),
            "var": (d * d * x * x).bit_length(), "root": ((d * d * x * x).bit_length() + 1) // 2,
            "recip": LN_RECIP_BITS + 1, "centred": (2 * d * x).bit_length() + 1}


def real_to_int(x):
    """Round a real number half up to an integer (for building constants, not at run time)."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def div_half_up(num, den):
    """``num / den`` rounded half up, ``den > 0`` (integer mean of ``den`` values)."""
    if den <= 0:
        raise ValueError("Divisor must be positive, not {!r}".format(den))
    return (2 * num + den) // (2 * den)


def pooled_sum_format(group):
    """Sum of ``group`` ACT values, the sub-vector predictor's pooled-query numerator (the pooled
    query itself, its :func:`div_half_up` mean, is ACT again)."""
    return IntFormat(ACT.bits + ceil_log2(group))


def sta_key_sum_format(heads):
    """STA report: a key channel summed over ``heads`` heads (int8 keys), exact; the pruning
    metric's head mean is this sum over ``heads`` (:func:`golden.sta.key_metric`)."""
    return IntFormat(ACT.bits + ceil_log2(heads))


def sta_activation_format(d):
    """STA report: ``sum |x|`` over the ``d`` RESID channels of a token, exact
    (:func:`golden.sta.activation`)."""
    return IntFormat((d * -RESID.min).bit_length(), signed=False)


def predictor_score_format(head_dim):
    """A predicted sub-vector score: a pooled query (ACT) times a key (ACT), summed over
    ``head_dim`` channels; no rounding, no saturation."""
    return accumulator_format(ACT, ACT, head_dim)


def exp2_neg(t):
    """``2**(-t / 2**EXP2_FRAC_BITS)`` in units of ``2**-15`` for an integer ``t >= 0``:
    a table lookup on the fraction and a right shift by the integer part (floor)."""
    if t < 0:
        raise ValueError("exp2_neg needs t >= 0, not {!r}".format(t))
    q, r = t >> EXP2_FRAC_BITS, t & ((1 << EXP2_FRAC_BITS) - 1)
    return EXP2_LUT[r] >> q if q < 16 else 0


def softmax_row(scores, kept, mult, shift):
    """Integer softmax of one row of attention scores over its kept entries.

    Parameters
    ----------
    scores : sequence of int
        Raw scores (accumulators of ``Q . K``).
    kept : sequence of bool
        Entries that take part; the others are ``-inf`` (probability 0).
    mult, shift : int
        ``t = round_shift((max - s) * mult, shift)`` converts a score distance into the base-2
        exponent in units of ``2**-EXP2_FRAC_BITS`` (``mult / 2**shift`` approximates
        ``score_scale * log2(e) * 2**EXP2_FRAC_BITS``).

    Returns
    -------
    list of int
        :data:`PROB` values in units of ``2**-PROB_FRAC_BITS``; all zero when nothing is kept.
    """
    REQ_MULT.check(mult, "Softmax exponent multiplier")
    REQ_SHIFT.check(shift, "Softmax exponent shift")
    live = [s for s, k in zip(scores, kept) if k]
    if not live:
        return [0] * len(scores)
    top = max(live)
    e = [exp2_neg(round_shift((top - s) * mult, shift)) if k else 0
         for s, k in zip(scores, kept)]
    recip = (1 << SOFTMAX_RECIP_BITS) // sum(e)
    return [PROB.saturate(round_shift(x * recip, SOFTMAX_RECIP_BITS - PROB_FRAC_BITS))
            for x in e]


def layernorm_row(x, gamma, beta, mult, shift, out=ACT):
    """Integer LayerNorm of one token.

    ``c_i = d * x_i - sum(x)`` (the centred value times ``d``), ``sigma = isqrt(sum(c_i**2) // d)``
    (the standard deviation times ``d``, at least 1), ``n_i = round_shift(c_i * recip,
    LN_RECIP_BITS - LN_FRAC_BITS)`` with ``recip = floor(2**LN_RECIP_BITS / sigma)``, and the
    output ``requantize(gamma_i * n_i + beta_i, mult, shift)``; ``gamma`` is int8 and ``beta``
    (:data:`LN_BETA`) is in units of ``gamma``'s scale times ``2**-LN_FRAC_BITS``.

    Because ``sum(c_i) = 0``, ``sum(c_i**2) = d * (d * sum(x_i**2) - sum(x)**2)`` exactly, so
    ``sum(c_i**2) // d = d * sum(x_i**2) - sum(x)**2``: one pass over the token gives sigma
    (what :class:`hw.layernorm.LayerNorm` computes).
    """
    d = len(x)
    total = sum(x)
    c = [d * v - total for v in x]
    sigma = max(1, math.isqrt(sum(v * v for v in c) // d))
    recip = (1 << LN_RECIP_BITS) // sigma
    n = [round_shift(v * recip, LN_RECIP_BITS - LN_FRAC_BITS) for v in c]
    return [requantize(g * v + b, mult, shift, out) for g, v, b in zip(gamma, n, beta)]


def gelu_table(in_scale, out_scale, out=ACT):
    """GELU as a table over every int8 input: ``table[x + 128] = sat(round_half_up(
    gelu(x * in_scale) / out_scale))``. Built once per layer from its scales."""
    def gelu(v):
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    return tuple(out.saturate(math.floor(gelu(x * in_scale) / out_scale + 0.5))
                 for x in range(ACT.min, ACT.max + 1))


def keep_count(n, rho):
    """Units (columns, key sub-vectors) kept of ``n`` at keep ratio ``rho``:
    ``min(n, max(1, ceil(rho * n)))`` (``n = 0`` gives 0); the sub-vector policy
    (:meth:`golden.subvector.SubvectorAttention.keep`) and the predictor's ``keep`` register."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError("Column count must be a non-negative integer, not {!r}".format(n))
    if not 0 < rho <= 1:
        raise ValueError("Keep ratio must be in (0, 1], not {!r}".format(rho))
    return min(n, max(1, math.ceil(rho * n)))
