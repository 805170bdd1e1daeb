"""Stream switches of the whole model: where a run's tokens come from and where they go.

The model (:class:`hw.model.Model`) runs its blocks one after the other on one array. The
first block's tokens come from the embedding, a later block's from the token buffer
(:class:`hw.token_buffer.TokenBuffer`: the tokens the previous block left, pruned by STA);
the last block's go on to the head, the others' into the buffer. :class:`Select` picks a
run's input, :class:`Route` its output; both are
combinational and pass ``tokens`` tokens (beats with ``last``) per run, then DONE. The
source or destination not chosen sees ``ready`` (``valid``) low: a beat offered there waits
for a run that chooses it.
"""

from amaranth.hdl import Module, Mux
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from hw.engine import Engine, EngineRegisters, Setting, finish_on_tokens, token_gate
from hw.linear_engine import activation_layout

__all__ = ["SELECT_REGISTERS", "ROUTE_REGISTERS", "Select", "Route"]

#: :class:`Select`'s registers (:mod:`hw.engine`).
SELECT_REGISTERS = EngineRegisters(
    "select",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)"),
              Setting("source", 1, doc="0: the pipeline's stream (i), 1: the buffer port")],
    counters=(("tokens_out", "tokens passed on"),))

#: :class:`Route`'s registers (:mod:`hw.engine`).
ROUTE_REGISTERS = EngineRegisters(
    "route",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)"),
              Setting("dest", 1, doc="0: the pipeline's stream (o), 1: the buffer port")],
    counters=(("tokens_out", "tokens passed on"),))


class Select(Engine):
    """``o`` takes the run's tokens from ``i`` or from ``buffer`` (setting ``source``).

    Attributes
    ----------
    i, buffer : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`.
    o : ``Out(stream)`` of the same layout.
    """

    registers = SELECT_REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "buffer": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        src = ctl.settings.source
        o = self.o
        valid = Mux(src, self.buffer.valid, self.i.valid)
        last = Mux(src, self.buffer.payload.last, self.i.payload.last)
        allow = token_gate(m, ctl, valid & o.ready & last)
        m.d.comb += [o.valid.eq(valid & allow),
                     o.payload.eq(Mux(src, self.buffer.payload, self.i.payload)),
                     self.i.ready.eq(o.ready & allow & ~src),
                     self.buffer.ready.eq(o.ready & allow & src),
                     ctl.config_ok.eq(ctl.settings.tokens != 0)]
        finish_on_tokens(m, ctl, o)
        return m


class Route(Engine):
    """The run's tokens from ``i`` leave on ``o`` or on ``buffer`` (setting ``dest``).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`.
    o, buffer : ``Out(stream)`` of the same layout.
    """

    registers = ROUTE_REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout)),
                                  "buffer": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        dest = ctl.settings.dest
        i = self.i
        ready = Mux(dest, self.buffer.ready, self.o.ready)
        allow = token_gate(m, ctl, i.valid & ready & i.payload.last)
        for port, chosen in ((self.o, ~dest), (self.buffer, dest)):
            m.d.comb += [port.valid.eq(i.valid & allow & chosen), port.payload.eq(i.payload)]
        m.d.comb += [i.ready.eq(ready & allow), ctl.config_ok.eq(ctl.settings.tokens != 0)]
        # Tokens leave on whichever port the run chose.
        m.d.comb += [ctl.count.tokens_out.eq(i.valid & i.ready & i.payload.last),
                     ctl.finished.eq(ctl.counters.tokens_out == ctl.settings.tokens)]
        return m
