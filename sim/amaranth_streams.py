"""``lib.stream`` drivers for Amaranth's own simulator (async testbenches).

The cocotb drivers in :mod:`sim.streams` do the same job on generated Verilog; both insert
seeded random valid/ready stalls so that back-pressure paths are exercised.
"""

import random

from amaranth.lib import data

__all__ = ["to_python", "StreamStalls", "put_all", "get_until", "csr_write", "csr_read",
           "add_watchdog"]


def to_python(value):
    """A ``data.Const`` (or int) as plain Python: dicts, lists and ints."""
    if isinstance(value, data.Const):
        layout = value.shape()
        if isinstance(layout, data.ArrayLayout):
            return [to_python(value[i]) for i in range(layout.length)]
        return {name: to_python(value[name]) for name, _ in layout}
    return int(value)


class StreamStalls:
    """Seeded random stall pattern: each handshake waits ``0..max_wait`` cycles with
    probability ``prob``."""

    def __init__(self, seed, prob=0.3, max_wait=3):
        self.rng = random.Random(seed)
        self.prob, self.max_wait = prob, max_wait

    def wait(self):
        return self.rng.randint(1, self.max_wait) if self.rng.random() < self.prob else 0


async def put_all(ctx, port, payloads, stalls=None, timeout=100_000):
    """Send every payload on ``port`` (a stream interface the testbench drives).

    Raises :exc:`TimeoutError` when a payload waits ``timeout`` cycles for ``ready``, so a
    design that never takes its input fails the test instead of stalling it.
    """
    for k, payload in enumerate(payloads):
        if stalls is not None:
            for _ in range(stalls.wait()):
                await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, payload)
        for _ in range(timeout):
            *_, ready = await ctx.tick().sample(port.ready)
            if ready:
                break
        else:
            raise TimeoutError("payload {} of {} not taken in {} cycles"
                               .format(k, len(payloads), timeout))
        ctx.set(port.valid, 0)


async def get_until(ctx, port, done, stalls=None, timeout=100_000):
    """Receive payloads from ``port`` until ``done(list_so_far)`` is true.

    Raises :exc:`TimeoutError` after ``timeout`` cycles without completion, so a hung design
    fails the test instead of stalling it.
    """
    received = []
    cycles = 0
    while not done(received):
        wait = stalls.wait() if stalls is not None else 0
        for _ in range(wait):
            await ctx.tick()
        ctx.set(port.ready, 1)
        while True:
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
            cycles += 1 + wait
            wait = 0
            if valid:
                break
            if cycles > timeout:
                raise TimeoutError("No output after {} cycles; received {!r}"
                                   .format(cycles, received))
        ctx.set(port.ready, 0)
        received.append(to_python(payload))
    return received


async def csr_write(ctx, csr, addr, value):
    """Write ``value`` to register ``addr`` of the register port ``csr``
    (:class:`hw.engine.RegisterSignature`)."""
    ctx.set(csr.addr, int(addr))
    ctx.set(csr.w_data, int(value))
    ctx.set(csr.w_en, 1)
    await ctx.tick()
    ctx.set(csr.w_en, 0)


async def csr_read(ctx, csr, addr):
    """The value of register ``addr`` of ``csr`` (it shows one cycle after the address)."""
    ctx.set(csr.addr, int(addr))
    await ctx.tick()
    await ctx.tick()
    return ctx.get(csr.r_data)


def add_watchdog(sim, cycles, what="the simulation", period=1e-8):
    """Bound ``sim`` (an Amaranth ``Simulator`` whose clock has ``period`` seconds) to
    ``cycles`` cycles: a background testbench raises :exc:`TimeoutError` then, so a design
    that hangs (or a testbench waiting on it without a bound) fails with a message instead of
    running forever. A simulation whose testbenches all end first is not slowed: background
    testbenches do not keep it running, and the watchdog's wait is one timer, not a tick a
    cycle."""
    async def watchdog(ctx):
        await ctx.delay(cycles * period)
        raise TimeoutError("watchdog: {} still running after {} cycles".format(what, cycles))
    sim.add_testbench(watchdog, background=True)
