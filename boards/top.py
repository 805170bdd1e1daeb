"""A linked design on a board: the accelerator behind the UART host link, on the board's pins.

:class:`BoardLink` holds one of the linked designs of :data:`hw.designs.DESIGNS`
(:class:`hw.link.Linked`: ``model_link``, ``run_through_link``, ``pe_array_link``) and
connects its ``rx`` and ``tx`` to the board's FTDI serial port (resource ``uart``); an LED
blinks at about 1 Hz so that a board that got its bitstream is told apart from one that did
not. The UART's bit time is the board clock over the baud rate, which must come out a whole
number of cycles (within 1 %): the host opens the port at the same rate
(:meth:`boards.link.Link.open`, ``make demo PORT=... BAUD=...``).
"""

from amaranth.hdl import (Cat, ClockDomain, ClockSignal, Elaboratable, Instance, Module,
                          ResetSignal, Signal)
from amaranth.lib import io

__all__ = ["heartbeat", "link_divisor", "ecp5_pll_dividers", "ECP5PLL", "BoardLink"]

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


def ecp5_pll_dividers(input_hz, output_hz):
    """Dividers of the ECP5's ``EHXPLLL`` that make ``output_hz`` from ``input_hz`` exactly:
    ``(CLKI_DIV, CLKFB_DIV, CLKOP_DIV)`` with feedback from CLKOP, so that
    ``output = input * CLKFB_DIV / CLKI_DIV`` and the VCO (``output * CLKOP_DIV``) runs at
    400 .. 800 MHz (the LFE5U data sheet's range) with the phase detector at >= 3.125 MHz; the
    smallest VCO divider first, as Trellis' ``ecppll`` picks."""
    for clki in range(1, 129):
        pfd = input_hz / clki
        if pfd < 3.125e6:
            break
        for clkfb in range(1, 81):
            if abs(pfd * clkfb - output_hz) > 1e-6 * output_hz:
                continue
            for clkop in range(1, 129):
                if 400e6 <= output_hz * clkop <= 800e6:
                    return clki, clkfb, clkop
    raise ValueError("An ECP5 PLL cannot make {:g} MHz from {:g} MHz exactly"
                     .format(output_hz / 1e6, input_hz / 1e6))


class ECP5PLL(Elaboratable):
    """Drives the ``sync`` clock domain (defined by the parent) at ``output_hz`` from the
    platform's default clock through an ``EHXPLLL``; ``sync``'s reset is held until the PLL
    has locked (and for two cycles after, so that it is released synchronously). nextpnr
    derives the domain's clock constraint, ``output_hz``, from the board clock's and places and
    routes for it."""

    def __init__(self, *, output_hz):
        self.output_hz = output_hz

    def elaborate(self, platform):
        m = Module()
        clk = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
        clki, clkfb, clkop = ecp5_pll_dividers(platform.default_clk_frequency, self.output_hz)
        clk_out, locked = Signal(name="pll_clk"), Signal(name="pll_locked")
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI="{:g}".format(platform.default_clk_frequency / 1e6),
            a_FREQUENCY_PIN_CLKOP="{:g}".format(self.output_hz / 1e6),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKI_DIV=clki,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=clkop, p_CLKOP_CPHASE=clkop // 2 - 1,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=clkfb,
            i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, o_CLKOP=clk_out, i_CLKFB=clk_out,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
        # LOCK is asynchronous to the PLL's output: two flip-flops before it releases reset.
        sync_lock = Signal(2)
        m.domains.pll_lock = ClockDomain("pll_lock", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(clk_out), ClockSignal("pll_lock").eq(clk_out),
                     ResetSignal("sync").eq(~sync_lock[1])]
        m.d.pll_lock += sync_lock.eq(Cat(locked, sync_lock[0]))
        # No constraint of its own: nextpnr derives the output's from the board clock's through
        # the PLL's dividers (its log: "Derived frequency constraint of 30.0 MHz for net clk"),
        # and a net named here may not survive synthesis.
        return m


class BoardLink(Elaboratable):
    """``design`` for ``config`` behind the link at ``baud``, for a platform.

    Parameters
    ----------
    design : str
        A linked design of :data:`hw.designs.DESIGNS`.
    config : :class:`hw.config.RTSAConfig`
    clock_hz : float
        The design's clock: the platform's default clock, or what ``clocks`` makes of it.
    baud : int
    led : (str, int) or None
        The heartbeat LED resource.
    clocks : Elaboratable or None
        What makes the ``sync`` domain at ``clock_hz`` (:class:`ECP5PLL`); ``None`` takes the
        platform's default clock.
    """

    def __init__(self, design, config, *, clock_hz, baud, led=None, clocks=None):
        from hw.designs import design_class
        self.divisor = link_divisor(clock_hz, baud)
        self.clock_hz, self.baud, self._led, self._clocks = clock_hz, baud, led, clocks
        self.link = design_class(design)(config, divisor=self.divisor,
                                         timeout=int(clock_hz * FRAME_TIMEOUT_S))

    def elaborate(self, platform):
        m = Module()
        if self._clocks is not None:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = self._clocks
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
