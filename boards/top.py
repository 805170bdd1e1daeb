"""A linked design on a board: the accelerator behind the UART host link, on the board's pins.

:class:`BoardLink` holds one of the linked designs of :data:`hw.designs.DESIGNS`
(:class:`hw.link.Linked`: ``model_link``, ``run_through_link``, ``pe_array_link``) and
connects its ``rx`` and ``tx`` to the board's FTDI serial port (resource ``uart``); an LED
blinks at about 1 Hz so that a board that got its bitstream is told apart from one that did
not. The UART's bit time is the board clock over the baud rate, which must come out a whole
number of cycles (within 1 %): the host opens the port at the same rate
(:meth:`boards.link.Link.open`, ``make demo PORT=... BAUD=...``).
"""

from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io

__all__ = ["heartbeat", "link_divisor", "BoardLink"]

#: Silence on the line that ends a frame (``TRUNCATED``) and the longest a stream may stall a
#: command (``STALLED``), in seconds; a host writes a frame's bytes back to back.
FRAME_TIMEOUT_S = 0.01


def heartbeat(m, half, beat):
    """Toggle ``beat`` every ``half`` cycles (``m``'s sync domain): a board's sign of life."""
    timer = Signal(range(half))
    with m.If(timer == half - 1):
        m.d.sync += [timer.eq(0), beat.eq(~beat)]
    with m.Else():
        m.d.sync += timer.eq(timer + 1)


def link_divisor(clock_hz, baud):
    """Clock cycles a bit: ``clock_hz / baud``, which must be a whole number within 1 %."""
    divisor = round(clock_hz / baud)
    if divisor < 4 or abs(clock_hz / divisor - baud) > 0.01 * baud:
        raise ValueError("A {:g} MHz clock cannot make {} baud (nearest: {:.0f} baud with {} "
                         "cycles a bit)".format(clock_hz / 1e6, baud, clock_hz / max(divisor, 1),
                                                divisor))
    return divisor


class BoardLink(Elaboratable):
    """``design`` for ``config`` behind the link at ``baud``, for a platform.

    Parameters
    ----------
    design : str
        A linked design of :data:`hw.designs.DESIGNS`.
    config : :class:`hw.config.RTSAConfig`
    clock_hz : float
        The platform's default clock.
    baud : int
    led : (str, int) or None
        The heartbeat LED resource.
    """

    def __init__(self, design, config, *, clock_hz, baud, led=None):
        from hw.designs import design_class
        self.divisor = link_divisor(clock_hz, baud)
        self.clock_hz, self.baud, self._led = clock_hz, baud, led
        self.link = design_class(design)(config, divisor=self.divisor,
                                         timeout=int(clock_hz * FRAME_TIMEOUT_S))

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]
        if self._led is not None:
            beat = Signal()
            heartbeat(m, max(1, int(self.clock_hz) // 2), beat)
            name, number = self._led
            m.submodules.led = led = io.Buffer("o", platform.request(name, number, dir="-"))
            m.d.comb += led.o.eq(beat)
        return m
