"""A register slice: one stream in, the same stream out, every output a register.

Between two components joined by ``connect`` the consumer's ``ready`` reaches the producer's
state in the same cycle, and a chain of them is one combinational path (the ULX3S build's
slowest after the delta encoder's stage 1b: the encoder's value packer waited on the bitmap
decoder's ``ready``, which waited on the pair buffer's, 28 ns by :mod:`boards.timing`). A slice
ends such a path: ``o.valid`` and ``o.payload`` are registers, and so is ``i.ready`` (the
slice's spare entry is empty).

Protocol: ``lib.stream`` on both sides (``o.valid`` is not withdrawn without ``o.ready``).
Throughput: a beat a cycle, with or without stalls on either side. Latency: one cycle. The
slice holds at most two beats (the output register and the spare, which fills when the
output stalls while a beat arrives).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisterSlice"]


class RegisterSlice(wiring.Component):
    """``i`` to ``o`` through two registers (see the module docstring).

    Parameters
    ----------
    shape : shape-like or :class:`amaranth.lib.data.Layout`
        The payload.

    Attributes
    ----------
    i : ``In(stream.Signature(shape))``
    o : ``Out(stream.Signature(shape))``
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)),
                          "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        spare = Signal.like(i.payload)
        spare_full = Signal()
        m.d.comb += i.ready.eq(~spare_full)
        with m.If(~o.valid | o.ready):
            # The output register moves on: the spare's beat first, else the arriving one.
            with m.If(spare_full):
                m.d.sync += [o.payload.eq(spare), o.valid.eq(1), spare_full.eq(0)]
            with m.Else():
                m.d.sync += [o.payload.eq(i.payload), o.valid.eq(i.valid)]
        with m.Elif(i.valid & ~spare_full):
            m.d.sync += [spare.eq(i.payload), spare_full.eq(1)]
        return m
