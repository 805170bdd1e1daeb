"""An 8N1 UART: a receiver and a transmitter with the bit time as a parameter.

The host link (:mod:`hw.link`) runs over the boards' FTDI serial port. ``divisor`` is the bit
time in clock cycles (``clock / baud``, rounded); at 3 Mbaud a 48 MHz clock gives 16, and the
simulations use 4 to keep the link's tests short. Bytes go least significant bit first:
a start bit (0), 8 data bits, a stop bit (1); the line idles at 1.

:class:`UARTRx`: the line passes two flip-flops (``rx`` is asynchronous to the clock), a falling
edge starts a byte, each bit is sampled in the middle of its bit time (the start bit too: a
glitch shorter than half a bit is ignored). A byte whose stop bit reads 0 is a framing error:
it is dropped and ``error`` pulses for one cycle. ``o`` has no buffer beyond its one register:
a byte not taken before the next one ends is lost and ``overrun`` pulses (the link's receiver
takes a byte every cycle, so this flags a design error, not line noise).

:class:`UARTTx`: a byte taken from ``i`` goes out as ten bit times; ``i.ready`` is high only
while the line is idle and in the last cycle of a stop bit, so one byte follows another with
no idle cycle between them (the receiver's rate: a loop-back never falls behind).

Latency: a received byte appears on ``o`` 2 cycles after the middle of its stop bit;
a byte taken by the transmitter starts its start bit on the next cycle.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "check_divisor"]


def check_divisor(divisor, component=None):
    """``divisor`` (clock cycles per bit) must be an integer of at least 4: the receiver
    samples in the middle of a bit, two cycles behind the line. (A ``component`` refused here
    is not reported as never elaborated.)"""
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
        if component is not None:
            component._MustUse__silence = True
        raise ValueError("divisor must be an integer of at least 4, not {!r}".format(divisor))
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver (module docstring).

    Attributes
    ----------
    rx : ``In(1)``: the line (idles at 1).
    o : ``Out(stream.Signature(8))``: received bytes.
    error : ``Out(1)``: pulses on a framing error (a stop bit read 0; the byte is dropped).
    overrun : ``Out(1)``: pulses when a byte ends while the previous one was not taken.
    """

    def __init__(self, divisor):
        self._divisor = check_divisor(divisor, self)
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "error": Out(1), "overrun": Out(1)})

    def elaborate(self, platform):
        m = Module()
        n = self._divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(n))
        bits = Signal(range(10))
        shift = Signal(9)                      # 8 data bits, then the stop bit
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("Idle"):
                with m.If(~line):
                    m.d.sync += timer.eq(n // 2 - 1)
                    m.next = "Start"
            with m.State("Start"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):             # not low at mid-bit: a glitch
                    m.next = "Idle"
                with m.Else():
                    m.d.sync += [timer.eq(n - 1), bits.eq(0)]
                    m.next = "Bits"
            with m.State("Bits"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(n - 1), shift.eq(Cat(shift[1:], line)),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 8):
                        m.next = "Stop"
            with m.State("Stop"):
                # shift[8] is the stop bit; shift[:8] the data, least significant bit first.
                with m.If(shift[8]):
                    m.d.comb += self.overrun.eq(self.o.valid & ~self.o.ready)
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shift[:8])]
                with m.Else():
                    m.d.comb += self.error.eq(1)
                m.next = "Idle"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter (module docstring).

    Attributes
    ----------
    i : ``In(stream.Signature(8))``: bytes to send.
    tx : ``Out(1)``: the line (idles at 1).
    """

    def __init__(self, divisor):
        self._divisor = check_divisor(divisor, self)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        n = self._divisor
        timer = Signal(range(n))
        bits = Signal(range(11))
        frame = Signal(10, init=0x3FF)         # the bits still to send, least significant first
        m.d.comb += self.tx.eq(frame[0])
        load = Signal()                         # take a byte now (idle, or the stop bit ends)
        with m.If(load & self.i.valid):
            m.d.sync += [frame.eq(Cat(0, self.i.payload, 1)), timer.eq(n - 1), bits.eq(0)]
        with m.FSM():
            with m.State("Idle"):
                m.d.comb += load.eq(1)
                with m.If(self.i.valid):
                    m.next = "Send"
            with m.State("Send"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bits == 9):
                    # The next byte's start bit follows the stop bit with no idle cycle.
                    m.d.comb += load.eq(1)
                    with m.If(~self.i.valid):
                        m.d.sync += frame.eq(0x3FF)
                        m.next = "Idle"
                with m.Else():
                    m.d.sync += [timer.eq(n - 1), frame.eq(Cat(frame[1:], 1)),
                                 bits.eq(bits + 1)]
        m.d.comb += self.i.ready.eq(load)
        return m
