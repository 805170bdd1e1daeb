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
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import bits_for
from hw.pe_array import PEClientSignature

__all__ = ["PEArbiter"]


class PEArbiter(wiring.Component):
    """Round-robin, accumulation-granular arbiter of ``ports`` PE clients onto one PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    ports : int
        Number of clients.
    in_flight : int
        Closed accumulations whose results may be inside the array at once (the array holds
        one in its output bank and one leaving it; more only cost FIFO entries).

    Attributes
    ----------
    clients : ``In(PEClientSignature(config)).array(ports)``
        One port per client (:class:`hw.pe_array.PEClientSignature`).
    array : ``Out(PEClientSignature(config))``
        Towards the array: ``array.req`` to :attr:`hw.pe_array.PEArray.i`, ``array.res`` from
        :attr:`hw.pe_array.PEArray.o`.

    Latency and throughput: combinational in both directions (no added cycle), one beat per
    cycle. Switching between clients costs no cycle: the grant moves on the beat after a
    ``last``.

    Back-pressure: results leave the array in the order the accumulations closed, so a client
    whose rows are at the head and not taken (``res.ready`` low) holds back the rows behind
    them, of every client. The requests of the other clients keep flowing meanwhile, until the
    ownership FIFO (``in_flight - 1`` more closed accumulations) or the array's output bank is
    full (``tests/test_pe_arbiter.py`` measures both bounds); hence the client rule of
    :class:`hw.pe_array.PEClientSignature`: take your results without outside waits.

    Known deviation from the stream rules: between accumulations the grant is recomputed every
    cycle, so a beat presented to a stalled array (``array.req.ready`` low) can be replaced by
    another client's beat before it is taken. :class:`hw.pe_array.PEArray` samples only on
    ``ready``, so results are unaffected; holding the grant would change the schedule, and this
    restructuring keeps every cycle count.
    """

    def __init__(self, config, *, ports=2, in_flight=4):
        if not isinstance(ports, int) or isinstance(ports, bool) or ports < 1:
            raise ValueError("ports must be a positive integer, not {!r}".format(ports))
        if not isinstance(in_flight, int) or isinstance(in_flight, bool) or in_flight < 1:
            raise ValueError("in_flight must be a positive integer, not {!r}".format(in_flight))
        self._ports = ports
        self._in_flight = in_flight
        super().__init__({"clients": In(PEClientSignature(config)).array(ports),
                          "array": Out(PEClientSignature(config))})

    def elaborate(self, platform):
        m = Module()
        P = self._ports
        ins = [c.req for c in self.clients]
        outs = [c.res for c in self.clients]
        pe_i, pe_o = self.array.req, self.array.res
        m.submodules.owners = owners = fifo.SyncFIFO(width=bits_for(P), depth=self._in_flight)

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
                             pe_i.payload.eq(ins[n].payload)]
        # A closing beat needs an ownership entry for its results.
        go = valid & (~closing | owners.w_rdy)
        m.d.comb += pe_i.valid.eq(go)
        for n in range(P):
            m.d.comb += ins[n].ready.eq((sel == n) & pe_i.ready & (~closing | owners.w_rdy))
        fire = go & pe_i.ready
        m.d.comb += [owners.w_en.eq(fire & closing), owners.w_data.eq(sel)]
        with m.If(fire):
            m.d.sync += [locked.eq(~closing), owner.eq(sel)]
            with m.If(closing):
                m.d.sync += last_grant.eq(sel)

        head = owners.r_data
        for n in range(P):
            m.d.comb += [outs[n].valid.eq(pe_o.valid & owners.r_rdy & (head == n)),
                         outs[n].payload.eq(pe_o.payload)]
            with m.If(head == n):
                m.d.comb += pe_o.ready.eq(owners.r_rdy & outs[n].ready)
        m.d.comb += owners.r_en.eq(pe_o.valid & pe_o.ready & pe_o.payload.last)
        return m
