"""cocotb testbench: a pseudo-terminal bridge to the simulated chip's UART pins, so that the host
library (:mod:`boards.link`, pyserial) talks to the generated Verilog exactly as it would to a
board's FTDI port.

The testbench opens a pseudo-terminal, writes the path of its terminal end to the file named
by ``RTSA_PTY_FILE``, and then moves bytes between the pseudo-terminal and the pins: each byte
the host writes is driven onto ``rx`` bit by bit (8N1, ``RTSA_DIVISOR`` clock cycles a bit),
and each byte the chip sends on ``tx`` is sampled in the middle of its bits and written back.
It ends when the file ``RTSA_PTY_FILE + ".done"`` appears (the host is finished), or with an
error when the process that started it ends, or after ``RTSA_PTY_LIMIT`` simulated cycles
without a byte from the host (default 20 million, about ten minutes of Verilator time). (An
orphaned simulation of an earlier version ran for an hour beside the next CI run.)
"""

import os
import tty

import cocotb
from cocotb.triggers import FallingEdge, Timer

from sim.streams import PERIOD_NS, start_clock_and_reset


async def _chip_to_host(dut, master, bit_ns):
    while True:
        await FallingEdge(dut.tx)
        await Timer(bit_ns // 2, unit="ns")
        if int(dut.tx.value):
            continue                                # a glitch, not a start bit
        byte = 0
        for k in range(8):
            await Timer(bit_ns, unit="ns")
            byte |= int(dut.tx.value) << k
        await Timer(bit_ns, unit="ns")
        if int(dut.tx.value):
            os.write(master, bytes([byte]))
        else:
            dut._log.error("framing error on tx (byte %#04x)", byte)


async def _host_to_chip(dut, master, bit_ns, done, limit_ns):
    poll_ns = 20 * bit_ns
    elapsed = 0
    parent = os.getppid()
    while not os.path.exists(done):
        if os.getppid() != parent:
            # The process that started the simulation (and runs the host) is gone: an orphaned
            # simulation would otherwise spin until its limit.
            raise RuntimeError("the host process ended without finishing the link")
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            data = b""
        if not data:
            await Timer(poll_ns, unit="ns")
            elapsed += poll_ns
            if elapsed > limit_ns:
                raise TimeoutError("the host sent nothing for {} ns".format(limit_ns))
            continue
        elapsed = 0
        for byte in data:
            for b in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                dut.rx.value = b
                await Timer(bit_ns, unit="ns")


@cocotb.test()
async def link_bridge(dut):
    dut.rx.value = 1
    await start_clock_and_reset(dut)
    divisor = int(os.environ.get("RTSA_DIVISOR", "4"))
    bit_ns = divisor * PERIOD_NS
    path_file = os.environ["RTSA_PTY_FILE"]
    limit_ns = int(os.environ.get("RTSA_PTY_LIMIT", "20000000")) * PERIOD_NS
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    with open(path_file + ".tmp", "w") as f:
        f.write(os.ttyname(slave))
    os.replace(path_file + ".tmp", path_file)
    cocotb.start_soon(_chip_to_host(dut, master, bit_ns))
    try:
        await _host_to_chip(dut, master, bit_ns, path_file + ".done", limit_ns)
    finally:
        os.close(master)
        os.close(slave)
