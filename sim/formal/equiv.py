"""Arithmetic proved equal to the contract: miters of each lowering in :mod:`hw.arith` (and the
requantiser's pipeline) against a reference written, as a combinational formula, from the
scalar function of :mod:`golden.contract` it lowers.

Each check is a :class:`Miter`: free inputs (every value of their shapes, within the stated
domain), the design's value and the reference's, and one assertion that they are equal. A
combinational miter is proved for *every* input by a BMC of one step; the requantiser's, a
pipeline with one value in flight per step, by a BMC two steps past its latency (the first
free input follows the reset step; each output depends on one input only, and that input is
free). Widths are the real ones: the ``large``
preset's accumulators (the widest the generator builds), the softmax unit's divider and
output pass at their hardware widths.

The softmax unit's divider is proved by its step: one restoring step keeps the long division's
invariant (``2 rem = bit * sum + rem'``, ``rem' < sum``) for every remainder below every sum of
the real width; with the unit's initial remainder ``2**(31 - K) < sum``, ``K`` steps then give
``2**31 = q * sum + rem_K`` with ``rem_K < sum``, which is ``q = 2**31 // sum``. (A miter of
the whole ``K``-step divider against ``2**31 // sum`` did not finish in 5 minutes.)

The references restate the contract's definitions literally (``(x + (1 << (s - 1))) >> s``,
``max(min(x, hi), lo)``, ``EXP2_LUT[r] >> q if q < 16 else 0``, ``2**31 // sum``), not the
hardware's restructurings (``((x >> (s - 1)) + 1) >> 1``, split partial products, a restoring
divider).
"""

from amaranth.hdl import (Array, Assert, Assume, Const, Module, Mux, Signal, signed,
                          unsigned)
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from golden import contract
from hw import arith
from hw.config import preset
from sim.formal import mutants as M
from sim.formal.cases import Check

__all__ = ["EQUIV", "Miter"]

#: The widest accumulator the presets build, and its product with the multiplier.
WIDE = preset("large")
ACC = arith.shape_of(WIDE.acc_format)
PRODUCT = arith.shape_of(contract.product_format(WIDE.acc_format, contract.REQ_MULT))
SHIFT = arith.shape_of(contract.REQ_SHIFT)
MULT = arith.shape_of(contract.REQ_MULT)


class Miter(wiring.Component):
    """``design(m, ins)`` against ``reference(m, ins)`` on the free inputs ``ins`` (``{name:
    shape}``), under ``domain(ins)``, asserted equal. ``latency``: the design's value belongs
    to the inputs that many steps earlier."""

    def __init__(self, inputs, design, reference, domain=None, latency=0):
        self._design, self._reference, self._domain = design, reference, domain
        self.latency = self._latency = latency
        super().__init__({name: In(shape) for name, shape in inputs.items()})

    def elaborate(self, platform):
        m = Module()
        ins = {name: getattr(self, name) for name in self.signature.members}
        got = self._design(m, ins)
        # The reference sees the inputs the design's value belongs to.
        late = dict(ins)
        for _ in range(self._latency):
            nxt = {}
            for name, value in late.items():
                reg = Signal.like(value)
                m.d.sync += reg.eq(value)
                nxt[name] = reg
            late = nxt
        want = self._reference(m, late)
        steps = Signal(range(self._latency + 2))
        with m.If(steps <= self._latency):
            m.d.sync += steps.eq(steps + 1)
        if self._domain is not None:
            m.d.comb += Assume(self._domain(ins))
        # Reset holds the pipeline in step 0: its first free output comes a step later.
        with m.If(steps >= (self._latency + 1 if self._latency else 0)):
            m.d.comb += Assert(got == want)
        return m


def _check(name, prop, inputs, design, reference, mutant, *, domain=None, latency=0,
           quick=False, note=""):
    def build():
        return Miter(inputs, design, reference, domain, latency), [], {}
    return Check(name, prop, build, "bmc", latency + 2, mutant, cut=False, quick=quick,
                 note=note)


# --- References, written from the contract's scalar functions. --------------------------

def _ref_round_shift(x, shift):
    """``x`` if ``shift == 0`` else ``(x + (1 << (shift - 1))) >> shift``."""
    half = Array(Const((1 << (s - 1)) if s else 0, 64) for s in range(1 << len(shift)))
    return Mux(shift == 0, x, (x + half[shift]) >> shift)


def _ref_saturate(x, fmt):
    """``fmt.max if x > fmt.max else fmt.min if x < fmt.min else x``."""
    return Mux(x > fmt.max, fmt.max, Mux(x < fmt.min, fmt.min, x))


def _ref_exp2_neg(t):
    """``EXP2_LUT[r] >> q if q < 16 else 0``, ``q, r = t >> 6, t & 63``."""
    lut = Array(Const(v, 16) for v in contract.EXP2_LUT)
    q, r = t >> contract.EXP2_FRAC_BITS, t & ((1 << contract.EXP2_FRAC_BITS) - 1)
    return Mux(q < 16, lut[r] >> q, 0)


# --- Mutated lowerings, one boundary each. ----------------------------------------------

def _truncating_round_shift(value, shift):
    return Mux(shift == 0, value, value >> shift)


def _off_by_one_saturate(value, fmt):
    clamped = Mux(value > fmt.max + 1, fmt.max, Mux(value < fmt.min, fmt.min, value))
    bits = clamped[:fmt.bits]
    return bits.as_signed() if fmt.signed else bits


def _early_clamp_exp2_neg(t):
    return Mux((t >> contract.EXP2_FRAC_BITS) >= arith.EXP_BITS - 1, 0,
               _ref_exp2_neg(t))


def _strict_restoring_step(rem, divisor):
    trial = rem << 1
    fit = trial > divisor
    return fit, Mux(fit, trial - divisor, trial)[:len(rem)]


def _unsaturated_prob(product):
    return arith.round_shift(product, Const(contract.SOFTMAX_RECIP_BITS
                                            - contract.PROB_FRAC_BITS))[:contract.PROB.bits]


def _signed_mult_requantize(acc, mult, shift, out=contract.ACT):
    return arith.requantize_product(acc * mult.as_signed(), shift, out)


def _no_round_tail(head, zero, fmt):
    return arith.saturate(Mux(zero, head, head >> 1), fmt)


def _equivalences():
    out = []
    out.append(_check(
        "arith", "round_shift = contract.round_shift (every {}-bit value, every shift)"
        .format(PRODUCT.width), {"x": PRODUCT, "shift": SHIFT},
        lambda m, i: arith.round_shift(i["x"], i["shift"]),
        lambda m, i: _ref_round_shift(i["x"], i["shift"]),
        M.replace_function(arith, "round_shift", _truncating_round_shift,
                           "round_shift truncates instead of rounding half up"), quick=True))
    out.append(_check(
        "arith", "saturate = contract.IntFormat.saturate into ACT ({}-bit values)"
        .format(PRODUCT.width + 1), {"x": signed(PRODUCT.width + 1)},
        lambda m, i: arith.saturate(i["x"], contract.ACT),
        lambda m, i: _ref_saturate(i["x"], contract.ACT),
        M.replace_function(arith, "saturate", _off_by_one_saturate,
                           "saturate clamps above max + 1 (max + 1 wraps)"), quick=True))
    out.append(_check(
        "arith", "requantize = contract.requantize ({}-bit accumulators)".format(ACC.width),
        {"acc": ACC, "mult": MULT, "shift": SHIFT},
        lambda m, i: arith.requantize(i["acc"], i["mult"], i["shift"]),
        lambda m, i: _ref_saturate(_ref_round_shift(i["acc"] * i["mult"], i["shift"]),
                                   contract.ACT),
        M.replace_function(arith, "requantize", _signed_mult_requantize,
                           "the multiplier is taken as signed (mult >= 2**15 goes wrong)")))
    out.append(_requantiser_check())
    # The softmax unit at the widest preset: scores of the large accumulators, rows of up to
    # max_tokens entries.
    from hw.softmax_unit import RECIP_QUOTIENT_BITS as K
    t_bits = max(ACC.width, arith.EXP_BITS) + max(MULT.width, K)
    out.append(_check(
        "softmax", "exp2_neg = contract.exp2_neg (every {}-bit t)".format(t_bits),
        {"t": unsigned(t_bits)},
        lambda m, i: arith.exp2_neg(i["t"]), lambda m, i: _ref_exp2_neg(i["t"]),
        M.replace_function(arith, "exp2_neg", _early_clamp_exp2_neg,
                           "exp2_neg clamps to 0 one integer step early"), quick=True))
    sum_bits = (WIDE.max_tokens * contract.EXP2_LUT[0]).bit_length()
    out.append(_check(
        "softmax", "divider step: 2 rem = bit * sum + rem' and rem' < sum (every rem < sum, "
        "{}-bit sum)".format(sum_bits),
        {"sum": unsigned(sum_bits), "rem": unsigned(sum_bits + 1)}, _divider_step,
        lambda m, i: Const(1, 1),
        M.replace_function(arith, "restoring_step", _strict_restoring_step,
                           "the divider's compare is > instead of >= (exact quotients)"),
        domain=lambda i: (i["sum"] >= contract.EXP2_LUT[0]) & (i["rem"] < i["sum"]),
        quick=True, note="with rem_0 = 2**{} < sum, K steps give 2**31 = q * sum + rem_K, "
                         "rem_K < sum: q = 2**31 // sum".format(
                             contract.SOFTMAX_RECIP_BITS - K)))
    prob_shift = contract.SOFTMAX_RECIP_BITS - contract.PROB_FRAC_BITS
    out.append(_check(
        "softmax", "output pass = PROB.saturate(round_shift(e * recip, {}))".format(prob_shift),
        {"e": unsigned(arith.EXP_BITS), "recip": unsigned(K)},
        lambda m, i: arith.softmax_prob(i["e"] * i["recip"]),
        lambda m, i: _ref_saturate(_ref_round_shift(i["e"] * i["recip"], Const(prob_shift, 6)),
                                   contract.PROB),
        M.replace_function(arith, "softmax_prob", _unsaturated_prob,
                           "no saturation (a probability of exactly 1.0 wraps to 0)"),
        domain=lambda i: i["e"] <= contract.EXP2_ONE, quick=True))
    return out


def _divider_step(m, i):
    """1 when one :func:`hw.arith.restoring_step` keeps the division's invariant: ``2 rem =
    bit * sum + rem'`` (``rem'`` not truncated) and ``rem' < sum``."""
    fit, rest = arith.restoring_step(i["rem"], i["sum"])
    return ((i["rem"] << 1) == Mux(fit, i["sum"], 0) + rest) & (rest < i["sum"])


def _requantiser_check():
    from hw.requantiser import Requantiser, latency
    cfg = preset("large").replace(requant_lanes=1, requant_steps=4)
    L = latency(cfg)

    def design(m, i):
        rq = Requantiser(cfg, unsigned(1))
        # Elaborated now, inside a mutant's replacement of an arith function.
        rq._MustUse__silence = True
        m.submodules.rq = rq.elaborate(None)
        m.d.comb += [rq.en.eq(1), rq.i.valid.eq(1), rq.i.acc[0].eq(i["acc"]),
                     rq.i.mult.eq(i["mult"]), rq.i.shift.eq(i["shift"]), rq.i.bypass.eq(0)]
        return rq.o.data[0]

    def reference(m, i):
        return _ref_saturate(_ref_round_shift(i["acc"] * i["mult"], i["shift"]), contract.ACT)

    return _check(
        "requantiser", "the {}-step pipeline = contract.requantize ({}-bit accumulators)"
        .format(L, ACC.width), {"acc": ACC, "mult": MULT, "shift": SHIFT}, design, reference,
        M.replace_function(arith, "round_saturate_tail", _no_round_tail,
                           "the last step drops the rounding increment"), latency=L,
        note="split partial products against one product")


EQUIV = _equivalences()
