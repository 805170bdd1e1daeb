"""The PE array's requantisers: ``lanes`` accumulators to the output format, pipelined.

Each lane computes the contract's rule (:func:`golden.contract.requantize`)::

    saturate(round_shift(acc * mult, shift))        (or acc itself with bypass)

in four registered steps (``config.requant_steps``; three computes the product whole, in one
step), so that no step holds more than one wide operation: two partial products (the
accumulator's low :data:`LOW_BITS` bits and its high bits, both unsigned, each times ``mult``,
and the sign's correction); their sum; the variable shift by ``shift - 1``; the rounding
increment, the last shift by one and the saturation (:func:`hw.arith.round_shift_head`,
:func:`hw.arith.round_saturate_tail`). In one cycle after the product (the array's earlier
output stage) the shift, the increment's carry chain and the saturating compare were the
critical path of the iCE40 build: 57.8 ns (17.3 MHz, ``make bitstream BOARD=icebreaker``);
split from the product but with the whole 29 x 16 product in one step, the product was
(44.8 ns, 22.3 MHz). Each unsigned partial product fits one 16 x 16 multiplier (an SB_MAC16,
a MULT18X18D), so the iCE40 build maps them to two of its eight DSPs and builds two lanes'
9 x 9 products in logic instead (:data:`boards.build.BOARDS`): a 29 x 16 product in LUTs took
1333 of the UP5K's 5280 logic cells.

A fixed-latency pipeline under one enable, not a stream: the array moves all its output stages
together, so a ``tag`` (what the array needs to know about the lanes: the row, ``last``,
overflow) travels beside the values and leaves with them.
"""

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith

__all__ = ["latency", "requantiser_input_layout", "requantiser_output_layout", "Requantiser"]

#: Bits of the accumulator's low (unsigned) part, one multiplier operand of 18 bits or less.
LOW_BITS = 15


def latency(config):
    """Enabled cycles from an input of :class:`Requantiser` to its output."""
    return config.requant_steps


def requantiser_input_layout(config, tag):
    """One input of :class:`Requantiser`: ``requant_lanes`` accumulators and their constants."""
    acc = arith.shape_of(config.acc_format)
    return data.StructLayout({
        "valid": 1,
        "acc": data.ArrayLayout(acc, config.requant_lanes),
        "mult": arith.shape_of(contract.REQ_MULT),
        "shift": arith.shape_of(contract.REQ_SHIFT),
        "bypass": 1,          # pass the accumulators through unchanged
        "tag": tag,
    })


def requantiser_output_layout(config, tag):
    """One output of :class:`Requantiser`: values in the accumulator's shape (requantised ones
    sign-extended from the output format)."""
    return data.StructLayout({
        "valid": 1,
        "data": data.ArrayLayout(arith.shape_of(config.acc_format), config.requant_lanes),
        "tag": tag,
    })


class Requantiser(wiring.Component):
    """``requant_lanes`` requantisers with a shared multiplier and shift.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    tag : shape-castable
        What travels beside the values.

    Attributes
    ----------
    en : ``In(1)``
        The pipeline moves when high: ``i`` is taken, every step advances.
    i : ``In(requantiser_input_layout(config, tag))``
    o : ``Out(requantiser_output_layout(config, tag))``
        Registered; ``o`` shows the input taken :func:`latency` enabled cycles before, with its
        ``valid`` and ``tag``.
    """

    def __init__(self, config, tag):
        self._config = config
        self._tag = tag
        super().__init__({"en": In(1), "i": In(requantiser_input_layout(config, tag)),
                          "o": Out(requantiser_output_layout(config, tag))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        RQ = cfg.requant_lanes
        acc_shape = arith.shape_of(cfg.acc_format)
        prod_shape = arith.shape_of(contract.product_format(cfg.acc_format, contract.REQ_MULT))
        low = min(LOW_BITS, cfg.acc_format.bits - 1)
        step = data.StructLayout({
            "valid": 1, "bypass": 1, "zero": 1, "shift": arith.shape_of(contract.REQ_SHIFT),
            "raw": data.ArrayLayout(acc_shape, RQ), "value": data.ArrayLayout(prod_shape, RQ),
            "lo": data.ArrayLayout(prod_shape, RQ),
            "corr": data.ArrayLayout(arith.shape_of(contract.REQ_MULT), RQ), "tag": self._tag})
        s0, s1, s2 = Signal(step), Signal(step), Signal(step)
        i = self.i
        with m.If(self.en):
            if cfg.requant_steps == 4:
                # Step 0: partial products of the accumulator's low and high bits, both
                # unsigned, and the sign's correction: acc = acc[:W] - sign 2**W as an unsigned
                # W-bit word, so acc mult = lo mult + (hi mult << low) - (sign ? mult << W).
                # Unsigned operands keep each product within one 16 x 16 multiplier (a signed
                # high part would widen mult to 17 signed bits: two SB_MAC16 on an iCE40).
                m.d.sync += [s0.valid.eq(i.valid), s0.bypass.eq(i.bypass),
                             s0.shift.eq(i.shift), s0.raw.eq(i.acc), s0.tag.eq(i.tag)]
                W = cfg.acc_format.bits
                for q in range(RQ):
                    m.d.sync += [s0.lo[q].eq(i.acc[q][:low] * i.mult),
                                 s0.value[q].eq(i.acc[q][low:W] * i.mult),
                                 s0.corr[q].eq(Mux(i.acc[q][W - 1], i.mult, 0))]
                products = [(s0.value[q] << low) + s0.lo[q] - (s0.corr[q] << W)
                            for q in range(RQ)]
                src = s0
            else:
                products = [i.acc[q] * i.mult for q in range(RQ)]
                src = SimpleNamespace(valid=i.valid, bypass=i.bypass, shift=i.shift, raw=i.acc,
                                      tag=i.tag)
            # Step 1: the product.
            m.d.sync += [s1.valid.eq(src.valid), s1.bypass.eq(src.bypass),
                         s1.shift.eq(src.shift), s1.raw.eq(src.raw), s1.tag.eq(src.tag)]
            m.d.sync += [s1.value[q].eq(products[q]) for q in range(RQ)]
            # Step 2: the variable shift by shift - 1.
            m.d.sync += [s2.valid.eq(s1.valid), s2.bypass.eq(s1.bypass),
                         s2.zero.eq(s1.shift == 0), s2.raw.eq(s1.raw), s2.tag.eq(s1.tag)]
            m.d.sync += [s2.value[q].eq(arith.round_shift_head(s1.value[q], s1.shift))
                         for q in range(RQ)]
            # Step 3: round, saturate.
            m.d.sync += [self.o.valid.eq(s2.valid), self.o.tag.eq(s2.tag)]
            for q in range(RQ):
                out = arith.round_saturate_tail(s2.value[q], s2.zero, cfg.out_format)
                m.d.sync += self.o.data[q].eq(Mux(s2.bypass, s2.raw[q], out))
        return m
