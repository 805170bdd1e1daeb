"""The UART under Amaranth's simulator, through its pins: every byte value out and back at the
smallest divisor (4) and an odd one, bytes back to back, a framing error dropped and flagged,
a glitch ignored, a byte not taken flagged as an overrun; divisors checked."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.uart import UARTRx, UARTTx
from sim.amaranth_streams import get_until
from sim.uart_model import read_bytes, write_bytes


class Loop(wiring.Component):
    """A receiver whose bytes go straight back out through a transmitter."""

    def __init__(self, divisor):
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "error": Out(1),
                          "overrun": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(self._divisor)
        m.submodules.tx = tx = UARTTx(self._divisor)
        wiring.connect(m, rx.o, tx.i)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.error.eq(rx.error),
                     self.overrun.eq(rx.overrun)]
        return m


def _count_pulses(dut, bench, flag, cycles=400):
    """Run ``bench`` on ``dut`` for ``cycles`` cycles; how many cycles ``flag`` was high."""
    count = [0]

    async def watch(ctx):
        async for _, _, value in ctx.tick().sample(flag):
            count[0] += value

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(watch)
    sim.run_until(cycles * 1e-6)
    return count[0]


@pytest.mark.parametrize("divisor", [4, 7])
def test_every_byte_goes_out_and_back(divisor):
    dut = Loop(divisor)
    sent = bytes(range(256))
    got = []

    async def write(ctx):
        await write_bytes(ctx, dut.rx, sent, divisor)

    async def read(ctx):
        got.append(await read_bytes(ctx, dut.tx, len(sent), divisor))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(write)
    sim.add_testbench(read)
    sim.run_until(len(sent) * 12 * divisor * 1e-6)
    assert got and got[0] == sent


def test_a_framing_error_is_dropped_and_flagged_then_the_next_byte_is_exact():
    dut = UARTRx(4)
    seen = {}

    async def bench(ctx):
        await write_bytes(ctx, dut.rx, b"\x55", 4, stop_bit=0)
        await ctx.tick().repeat(40)                  # the line back at 1 long enough
        await write_bytes(ctx, dut.rx, b"\xa7", 4)
        seen["bytes"] = await get_until(ctx, dut.o, lambda r: len(r) >= 1, timeout=200)

    assert _count_pulses(dut, bench, dut.error) == 1 and seen["bytes"] == [0xA7]


def test_a_short_glitch_is_not_a_byte_and_an_untaken_byte_is_an_overrun():
    dut = UARTRx(8)

    async def bench(ctx):
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(2)                   # a glitch of a quarter bit
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(100)
        assert not ctx.get(dut.o.valid)
        await write_bytes(ctx, dut.rx, b"\x01\x02", 8)   # o.ready low: the second overruns
        await ctx.tick().repeat(20)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x02

    assert _count_pulses(dut, bench, dut.overrun) == 1


@pytest.mark.parametrize("divisor", [3, 0, 4.0, True])
def test_divisor_is_checked(divisor):
    with pytest.raises(ValueError, match="divisor must be an integer of at least 4"):
        UARTTx(divisor)
