"""Bit-level models of the host's end of the UART (8N1, ``divisor`` clock cycles per bit), for
testbenches that drive :class:`hw.uart.UARTRx` and read :class:`hw.uart.UARTTx` through their
pins, as the FTDI chip would.

Amaranth (``ctx`` of an async testbench): :func:`write_bytes`, :func:`read_bytes`. Every wait
is bounded: :func:`read_bytes` raises :exc:`TimeoutError` when the line stays idle for
``timeout`` cycles.
"""

__all__ = ["write_bytes", "read_bytes", "LineMonitor", "transact"]


async def write_bytes(ctx, pin, data, divisor, *, gap=0, stop_bit=1):
    """Drive ``pin`` with the bytes ``data``: start bit, 8 data bits (least significant first),
    stop bit (``stop_bit`` 0 makes a framing error), then ``gap`` idle bit times."""
    for byte in bytes(data):
        bits = [0] + [(byte >> k) & 1 for k in range(8)] + [stop_bit]
        for bit in bits:
            ctx.set(pin, bit)
            await ctx.tick().repeat(divisor)
        ctx.set(pin, 1)
        if gap:
            await ctx.tick().repeat(gap * divisor)


async def read_bytes(ctx, pin, count, divisor, *, timeout=100_000):
    """Read ``count`` bytes from ``pin`` (sampling each bit in its middle); raises
    :exc:`TimeoutError` when no start bit comes for ``timeout`` cycles, or the stop bit is 0."""
    out = bytearray()
    while len(out) < count:
        waited = 0
        while ctx.get(pin):
            await ctx.tick()
            waited += 1
            if waited > timeout:
                raise TimeoutError("UART: byte {} of {} not sent in {} cycles (got {})"
                                   .format(len(out), count, timeout, bytes(out).hex()))
        await ctx.tick().repeat(divisor // 2)
        byte = 0
        for k in range(8):
            await ctx.tick().repeat(divisor)
            byte |= ctx.get(pin) << k
        await ctx.tick().repeat(divisor)
        if not ctx.get(pin):
            raise TimeoutError("UART: byte {} has a stop bit of 0".format(len(out)))
        out.append(byte)
    return bytes(out)


class LineMonitor:
    """Collects every byte sent on ``pin`` (run :meth:`process` with ``add_testbench(...,
    background=True)``);
    :meth:`wait_for` waits (bounded) until ``n`` bytes have come."""

    def __init__(self, pin, divisor):
        self.pin, self.divisor = pin, divisor
        self.bytes = bytearray()
        self.framing_errors = 0

    async def process(self, ctx):
        n = self.divisor
        while True:
            while ctx.get(self.pin):
                await ctx.tick()
            await ctx.tick().repeat(n // 2)
            byte = 0
            for k in range(8):
                await ctx.tick().repeat(n)
                byte |= ctx.get(self.pin) << k
            await ctx.tick().repeat(n)
            if ctx.get(self.pin):
                self.bytes.append(byte)
            else:
                self.framing_errors += 1

    async def wait_for(self, ctx, n, *, timeout=100_000):
        for _ in range(timeout):
            if len(self.bytes) >= n:
                return
            await ctx.tick()
        raise TimeoutError("UART: {} bytes expected, {} came in {} cycles ({})".format(
            n, len(self.bytes), timeout, bytes(self.bytes).hex()))


async def transact(ctx, pin, monitor, frame, divisor, *, timeout=100_000):
    """Send ``frame`` (bytes) on ``pin``, wait for one whole response on ``monitor``; returns
    the response's bytes."""
    start = len(monitor.bytes)
    await write_bytes(ctx, pin, frame, divisor)
    await monitor.wait_for(ctx, start + 5, timeout=timeout)
    length = int.from_bytes(monitor.bytes[start + 3:start + 5], "little")
    await monitor.wait_for(ctx, start + 7 + length, timeout=timeout)
    return bytes(monitor.bytes[start:start + 7 + length])
