"""cocotb drivers for the generated ``lib.stream`` ports, with seeded random stalls.

Amaranth names a stream member ``<name>__valid``, ``<name>__ready`` and ``<name>__payload``
(one flat vector); payloads are packed and unpacked with the very ``lib.data`` layout the
generator used, so the testbench cannot disagree with the RTL about field positions.
Inputs are driven and outputs sampled on the falling clock edge (same behaviour on Icarus
and Verilator).
"""

import cocotb
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly
from cocotb.types import LogicArray

from sim.amaranth_streams import StreamStalls, to_python

__all__ = ["pack", "unpack", "start_clock_and_reset", "StreamSource", "StreamSink"]


def pack(layout, payload):
    """Python dict/list payload -> integer of the layout's bits."""
    return layout.const(payload).as_value().value


def unpack(layout, bits):
    """Integer of the layout's bits -> Python dict/list payload."""
    return to_python(data.Const(layout, bits))


async def start_clock_and_reset(dut, cycles=2):
    """Start a 100 MHz clock on ``clk`` and hold the synchronous ``rst`` for ``cycles``."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


class _StreamPort:
    """Handles of one stream port of the DUT and its stall pattern."""

    def __init__(self, dut, name, layout, seed, stall, max_wait):
        self.clk = dut.clk
        self.valid = getattr(dut, name + "__valid")
        self.ready = getattr(dut, name + "__ready")
        self.payload = getattr(dut, name + "__payload")
        self.layout = layout
        self.stalls = StreamStalls(seed, stall, max_wait)


class StreamSource(_StreamPort):
    """Drives payloads into the DUT's input stream ``name``.

    Parameters
    ----------
    dut, name : the cocotb DUT handle and the stream's port prefix.
    layout : the stream's payload ``lib.data`` layout.
    seed, stall : random stall pattern (probability that a beat is preceded by idle cycles).
    """

    def __init__(self, dut, name, layout, *, seed, stall=0.3, max_wait=3):
        super().__init__(dut, name, layout, seed, stall, max_wait)
        self.valid.value = 0
        self.payload.value = 0      # no X on an idle bus (Icarus is 4-state)
        self.sent = 0

    async def send(self, payloads):
        for payload in payloads:
            for _ in range(self.stalls.wait()):
                await FallingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = LogicArray.from_unsigned(pack(self.layout, payload),
                                                          self.layout.size)
            while True:
                await ReadOnly()
                accepted = bool(self.ready.value)
                await FallingEdge(self.clk)
                if accepted:
                    break
            self.valid.value = 0
            self.sent += 1


class StreamSink(_StreamPort):
    """Takes payloads from the DUT's output stream ``name``, stalling ``ready`` at random."""

    def __init__(self, dut, name, layout, *, seed, stall=0.3, max_wait=3):
        super().__init__(dut, name, layout, seed, stall, max_wait)
        self.ready.value = 0
        self.received = []

    async def receive_until(self, done, timeout=100_000):
        """Collect payloads until ``done(received)``; fail after ``timeout`` idle cycles."""
        idle = 0
        while not done(self.received):
            stall = self.stalls.wait()
            self.ready.value = int(stall == 0)
            await ReadOnly()
            if stall == 0 and self.valid.value == 1:
                self.received.append(unpack(self.layout, self.payload.value.to_unsigned()))
                idle = 0
            else:
                idle += 1
                if idle > timeout:
                    raise TimeoutError("No output for {} cycles after {} beats"
                                       .format(timeout, len(self.received)))
            await FallingEdge(self.clk)
        self.ready.value = 0
        return self.received
