"""Sharing one PE array between engines, one accumulation at a time.

The array's accumulators belong to one accumulation from its ``clear`` beat to its ``last``
beat, so the arbiter switches between requesters only at accumulation boundaries; among the
requesters with a beat ready it takes them in round-robin order, so whichever engine has work
keeps the array busy. Results leave the array in the order the accumulations closed: an
ownership FIFO (one entry per closed accumulation) sends each result row back to its engine.

Engines must only open an accumulation whose beats follow without outside waits, and must be
able to take its results (see :class:`hw.run_through.RunThrough`); the arbiter itself never
holds the array for a requester that has nothing to send.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.pe_array import pe_input_layout, pe_output_layout

__all__ = ["PEArbiter"]


class PEArbiter(wiring.Component):
    """Round-robin, accumulation-granular arbiter of ``ports`` engines onto one PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    ports : int
        Number of engines.
    in_flight : int
        Closed accumulations whose results may be inside the array at once (the array holds
        one in its output bank and one leaving it; more only cost FIFO entries).

    Attributes
    ----------
    i0, i1, ... : ``In(stream)`` of :func:`hw.pe_array.pe_input_layout`, one per engine.
    o0, o1, ... : ``Out(stream)`` of :func:`hw.pe_array.pe_output_layout`, one per engine.
    pe_i, pe_o : the array's input (``Out``) and output (``In``) streams.
    """

    def __init__(self, config, *, ports=2, in_flight=4):
        if not isinstance(ports, int) or ports < 1:
            raise ValueError("ports must be a positive integer, not {!r}".format(ports))
        self._ports = ports
        self._in_flight = in_flight
        members = {"pe_i": Out(stream.Signature(pe_input_layout(config))),
                   "pe_o": In(stream.Signature(pe_output_layout(config)))}
        for n in range(ports):
            members[f"i{n}"] = In(stream.Signature(pe_input_layout(config)))
            members[f"o{n}"] = Out(stream.Signature(pe_output_layout(config)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        P = self._ports
        ins = [getattr(self, f"i{n}") for n in range(P)]
        outs = [getattr(self, f"o{n}") for n in range(P)]
        m.submodules.owners = owners = fifo.SyncFIFO(width=max(1, (P - 1).bit_length()),
                                                     depth=self._in_flight)

        locked = Signal()                       # an accumulation is open
        owner = Signal(range(P))
        last_grant = Signal(range(P), init=P - 1)
        # Round robin: the first requester after the last one granted.
        pick = Signal(range(P))
        for k in reversed(range(1, P + 1)):
            cand = (last_grant + k) % P if P > 1 else 0
            for n in range(P):
                with m.If((cand == n) & ins[n].valid):
                    m.d.comb += pick.eq(n)
        sel = Signal(range(P))
        m.d.comb += sel.eq(Mux(locked, owner, pick))

        valid = Signal()
        closing = Signal()
        for n in range(P):
            with m.If(sel == n):
                m.d.comb += [valid.eq(ins[n].valid), closing.eq(ins[n].payload.last),
                             self.pe_i.payload.eq(ins[n].payload)]
        # A closing beat needs an ownership entry for its results.
        go = valid & (~closing | owners.w_rdy)
        m.d.comb += self.pe_i.valid.eq(go)
        for n in range(P):
            m.d.comb += ins[n].ready.eq((sel == n) & self.pe_i.ready & (~closing | owners.w_rdy))
        fire = go & self.pe_i.ready
        m.d.comb += [owners.w_en.eq(fire & closing), owners.w_data.eq(sel)]
        with m.If(fire):
            m.d.sync += [locked.eq(~closing), owner.eq(sel)]
            with m.If(closing):
                m.d.sync += last_grant.eq(sel)

        head = owners.r_data
        for n in range(P):
            m.d.comb += [outs[n].valid.eq(self.pe_o.valid & owners.r_rdy & (head == n)),
                         outs[n].payload.eq(self.pe_o.payload)]
            with m.If(head == n):
                m.d.comb += self.pe_o.ready.eq(owners.r_rdy & outs[n].ready)
        m.d.comb += owners.r_en.eq(self.pe_o.valid & self.pe_o.ready & self.pe_o.payload.last)
        return m
