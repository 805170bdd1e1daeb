"""The engines' register port: 32-bit registers at small addresses.

A write (``csr_w_en``, ``csr_addr``, ``csr_w_data``) takes effect at the clock edge;
``csr_r_data`` shows the register at ``csr_addr`` one cycle later.
"""

from amaranth.lib.wiring import In, Out

__all__ = ["register_port", "register_reads"]


def register_port(addr_bits):
    """Signature members of a register port with ``addr_bits`` address bits."""
    return {"csr_addr": In(addr_bits), "csr_w_en": In(1), "csr_w_data": In(32),
            "csr_r_data": Out(32)}


def register_reads(m, component, registers):
    """Drive ``component.csr_r_data`` from ``registers``, pairs of (address, value); other
    addresses read 0."""
    with m.Switch(component.csr_addr):
        for addr, value in registers:
            with m.Case(addr):
                m.d.sync += component.csr_r_data.eq(value)
        with m.Default():
            m.d.sync += component.csr_r_data.eq(0)
