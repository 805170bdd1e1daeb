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
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, RisingEdge, Timer
from cocotb.types import LogicArray

from sim.amaranth_streams import StreamStalls, to_python
from sim.driver import JobDriver, port_layout

__all__ = ["PERIOD_NS", "pack", "unpack", "input_ports", "start_clock_and_reset", "csr_write",
           "csr_read", "StreamSource", "StreamSink", "CocotbBackend", "run_cocotb_plan"]

#: The clock period of every testbench (100 MHz).
PERIOD_NS = 10


def _cycles(n):
    """A trigger ``n`` clock periods from now: one simulator callback. (cocotb's ClockCycles
    resumes Python on every edge it counts, which a long wait for an output paid per cycle.)"""
    return Timer(max(1, n) * PERIOD_NS, unit="ns")


def pack(layout, payload):
    """Python dict/list payload -> integer of the layout's bits."""
    return layout.const(payload).as_value().value


def unpack(layout, bits):
    """Integer of the layout's bits -> Python dict/list payload."""
    return to_python(data.Const(layout, bits))


def input_ports(component):
    """Verilog names of the input ports of an Amaranth ``component`` (``clk`` and ``rst``
    aside), as the generator names them."""
    from amaranth.lib.wiring import In
    return ["__".join(map(str, path)) for path, member in component.signature.members.flatten()
            if member.is_port and member.flow == In]


async def start_clock_and_reset(dut, cycles=2, *, idle=()):
    """Start a 100 MHz clock on ``clk`` and hold the synchronous ``rst`` for ``cycles``.

    The inputs named in ``idle`` (e.g. :func:`input_ports`) are driven to 0 first: Icarus is
    4-state, and no input may be X, even one the design ignores while it is idle.
    """
    for name in idle:
        getattr(dut, name).value = 0
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    for _ in range(cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


async def csr_write(dut, addr, value):
    """Write ``value`` to register ``addr`` of the register port ``csr``
    (:class:`hw.engine.RegisterSignature`)."""
    dut.csr__addr.value = int(addr)
    dut.csr__w_data.value = int(value)
    dut.csr__w_en.value = 1
    await FallingEdge(dut.clk)
    dut.csr__w_en.value = 0


async def csr_read(dut, addr):
    """The value of register ``addr`` (it shows one cycle after the address)."""
    dut.csr__addr.value = int(addr)
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    await ReadOnly()
    value = dut.csr__r_data.value.to_unsigned()
    await FallingEdge(dut.clk)
    return value


class _StreamPort:
    """Handles of one stream port of the DUT and its stall pattern."""

    def __init__(self, dut, name, layout, seed, stall, max_wait, stalls):
        self.clk = dut.clk
        self.valid = getattr(dut, name + "__valid")
        self.ready = getattr(dut, name + "__ready")
        self.payload = getattr(dut, name + "__payload")
        self.layout = layout
        if stalls is None and seed is not None and stall:
            stalls = StreamStalls(seed, stall, max_wait)
        self.stalls = stalls

    async def _to_sampling_point(self):
        """After a handshake signal rose: go on at once if the clock is low (the signal rose at
        a falling edge, from an input driven there, and the coming rising edge is the
        transfer), else wait for the next falling edge."""
        if int(self.clk.value) != 0:
            await FallingEdge(self.clk)


class StreamSource(_StreamPort):
    """Drives payloads into the DUT's input stream ``name``.

    Parameters
    ----------
    dut, name : the cocotb DUT handle and the stream's port prefix.
    layout : the stream's payload ``lib.data`` layout.
    seed, stall : random stall pattern (probability that a beat is preceded by idle cycles).
    stalls : a :class:`sim.amaranth_streams.StreamStalls` instead of ``seed``/``stall``
        (``None`` and no seed: no stalls).
    """

    def __init__(self, dut, name, layout, *, seed=None, stall=0.3, max_wait=3, stalls=None):
        super().__init__(dut, name, layout, seed, stall, max_wait, stalls)
        self.valid.value = 0
        self.payload.value = 0      # no X on an idle bus (Icarus is 4-state)
        self.sent = 0

    async def send(self, payloads, timeout=None):
        """Send every payload; with ``timeout``, raise :exc:`TimeoutError` when one is not
        taken within ``timeout`` cycles (a design that never takes its input fails the test
        instead of hanging it)."""
        payloads = list(payloads)
        for k, payload in enumerate(payloads):
            wait = self.stalls.wait() if self.stalls is not None else 0
            if wait:
                await ClockCycles(self.clk, wait, rising=False)
            self.valid.value = 1
            self.payload.value = LogicArray.from_unsigned(pack(self.layout, payload),
                                                          self.layout.size)
            while True:
                await ReadOnly()
                if self.ready.value == 1:
                    await FallingEdge(self.clk)
                    break
                # Sleep until ready rises instead of polling every cycle (a blocked source
                # would otherwise cost Python work on every clock).
                if timeout is None:
                    await RisingEdge(self.ready)
                else:
                    limit = _cycles(timeout)
                    if await First(RisingEdge(self.ready), limit) is limit:
                        raise TimeoutError("payload {} of {} not taken in {} cycles"
                                           .format(k, len(payloads), timeout))
                await self._to_sampling_point()
            self.valid.value = 0
            self.sent += 1


class StreamSink(_StreamPort):
    """Takes payloads from the DUT's output stream ``name``, stalling ``ready`` at random."""

    def __init__(self, dut, name, layout, *, seed=None, stall=0.3, max_wait=3, stalls=None):
        super().__init__(dut, name, layout, seed, stall, max_wait, stalls)
        self.ready.value = 0
        self.received = []

    async def receive_until(self, done, timeout=100_000):
        """Collect payloads until ``done(received)``; fail after ``timeout`` idle cycles."""
        idle = 0
        while not done(self.received):
            if self.stalls is not None and self.stalls.wait():      # ready low this cycle
                self.ready.value = 0
                await FallingEdge(self.clk)
                idle += 1
                continue
            self.ready.value = 1
            await ReadOnly()
            if self.valid.value == 1:
                self.received.append(unpack(self.layout, self.payload.value.to_unsigned()))
                idle = 0
                await FallingEdge(self.clk)
                continue
            # Nothing offered: sleep until valid rises (or the timeout runs out) instead of
            # polling every cycle, then sample again (see _to_sampling_point).
            limit = _cycles(timeout - idle)
            if await First(RisingEdge(self.valid), limit) is limit:
                raise TimeoutError("No output for {} cycles after {} beats"
                                   .format(timeout, len(self.received)))
            await self._to_sampling_point()
            idle = 0
        self.ready.value = 0
        return self.received


class CocotbBackend:
    """The :mod:`sim.driver` backend interface on a cocotb DUT of the Amaranth component
    ``top`` (whose signature gives every stream's layout)."""

    def __init__(self, dut, top):
        self.dut, self.top = dut, top

    @staticmethod
    def _name(port):
        return port.replace(".", "__")

    async def tick(self, n=1):
        if n > 2:                       # one callback, then back onto a falling edge
            await _cycles(n - 1)
            await FallingEdge(self.dut.clk)
        else:
            await ClockCycles(self.dut.clk, n, rising=False)

    async def write(self, addr, value):
        await csr_write(self.dut, addr, value)

    async def read(self, addr):
        return await csr_read(self.dut, addr)

    async def send(self, port, beats, stalls, timeout):
        await StreamSource(self.dut, self._name(port), port_layout(self.top, port),
                           stalls=stalls).send(beats, timeout=timeout)

    async def receive(self, port, count, stalls, timeout):
        sink = StreamSink(self.dut, self._name(port), port_layout(self.top, port), stalls=stalls)
        return await sink.receive_until(lambda r: len(r) >= count, timeout=timeout)

    def ready(self, port):
        return bool(int(getattr(self.dut, self._name(port) + "__ready").value))


async def run_cocotb_plan(dut, top, plan, *, seed, stall, check=True, max_wait=3):
    """Run ``plan`` (:class:`sim.driver.Plan`) on the cocotb ``dut`` of ``top``: the setup, then
    every input and output stream concurrently; returns the driver's result (checked unless
    ``check`` is false). Each stall lasts up to ``max_wait`` cycles."""
    drv = JobDriver(top, plan, seed=seed, stall=stall, max_wait=max_wait)
    be = CocotbBackend(dut, top)
    await drv.setup(be)
    for fn in drv.sources():
        cocotb.start_soon(fn(CocotbBackend(dut, top)))
    sinks = [cocotb.start_soon(fn(CocotbBackend(dut, top))) for fn in drv.sinks()]
    # Join the sinks (they sleep on handshake edges) instead of letting the driver poll every
    # clock: Python work per cycle would slow Verilator several times over.
    for task in sinks:
        await task
    result = await drv.finish(be)
    if check:
        plan.check(top, result, seed)
    return result
