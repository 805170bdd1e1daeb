"""Token framer: every token leaves as exactly ``d / lanes`` activation beats.

A pipeline whose stream forks (a skip path, :class:`hw.pipeline.Tee`) and joins again beat by
beat (:class:`hw.residual.ResidualAdd`) must see the same number of beats on both sides, or
the join waits forever for a beat that never comes. The stages on the main path frame their
tokens themselves (:class:`hw.layernorm.LayerNorm` pads and cuts), a skip FIFO does not; a
framer at the fork makes the input well formed first.

A token whose ``last`` comes early is padded with zero beats (the input waits meanwhile); a
token without ``last`` on beat ``d / lanes`` is cut there (that beat leaves with ``last``) and
the input beats after it are dropped up to and including the next ``last``. Both set the
``token`` error. Throughput one beat a cycle, latency one cycle.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from hw.engine import Engine, EngineRegisters, Setting, finish_on_tokens, token_width
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "Framer"]

#: The framer's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "framer",
    settings=[Setting("d", doc="token width d (a multiple of lanes, at most max_d)"),
              Setting("tokens", doc="tokens in the run (DONE when all have left)")],
    errors=(("token", "a token's last beat came early (padded) or not at all (cut)"),),
    counters=(("tokens_out", "tokens emitted"),))


class Framer(Engine):
    """Pads or cuts tokens to ``d / lanes`` beats (see the module docstring).

    Attributes
    ----------
    i, o : activation streams (:func:`hw.linear_engine.activation_layout`).
    csr : registers :data:`REGISTERS`; ``config`` error: ``d`` not a multiple of lanes in
        ``lanes .. max_d``, or ``tokens`` zero.
    """

    registers = REGISTERS

    def __init__(self, config):
        super().__init__(config, {"i": In(stream.Signature(activation_layout(config))),
                                  "o": Out(stream.Signature(activation_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, D = cfg.lanes, cfg.max_d
        ctl = self.control(m)
        st = ctl.settings
        beats, d_ok = token_width(m, ctl, cfg)
        m.d.comb += ctl.config_ok.eq(d_ok & (st.tokens != 0))
        finish_on_tokens(m, ctl, self.o)
        i, o = self.i, self.o
        beat = Signal(range(D // V))
        final = beat == beats - 1
        adv = ~o.valid | o.ready
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(ctl.pulse.start):
            m.d.sync += beat.eq(0)
        error = Signal()
        m.d.comb += ctl.raise_error.token.eq(error)

        def emit(payload, last):
            m.d.sync += [o.valid.eq(1), o.payload.eq(payload), o.payload.last.eq(last),
                         beat.eq(beat + 1)]
            with m.If(last):
                m.d.sync += beat.eq(0)

        with m.FSM():
            with m.State("PASS"):
                m.d.comb += i.ready.eq(ctl.running & adv)
                with m.If(i.valid & i.ready):
                    emit(i.payload, final)
                    with m.If(i.payload.last & ~final):
                        m.d.comb += error.eq(1)
                        m.next = "PAD"
                    with m.If(~i.payload.last & final):
                        m.d.comb += error.eq(1)
                        m.next = "DROP"
            with m.State("PAD"):
                with m.If(adv):
                    emit(0, final)
                    with m.If(final):
                        m.next = "PASS"
            with m.State("DROP"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid & i.payload.last):
                    m.next = "PASS"
        return m
