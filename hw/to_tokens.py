"""Activation beats to a linear engine's token beats: the adapter in front of every projection.

The element-wise stages (:mod:`hw.layernorm`, :mod:`hw.gelu`) and the transposing buffer
emit :func:`hw.linear_engine.activation_layout` beats (``lanes`` values in int16 fields); a
:class:`hw.linear_engine.LinearEngine` takes :func:`hw.delta_encoder.token_layout` beats
(``bitmap_word`` int8 values and the token's spatial position, the key of its delta
reference). :class:`ToTokens` gathers ``bitmap_word / lanes`` activation beats into one token
beat and numbers the tokens: token ``t`` of a run has position ``t mod positions`` (frame-major
tokens of ``positions`` spatial positions per frame, the order of a whole clip).

Throughput: one activation beat a cycle (a token beat every ``bitmap_word / lanes`` cycles);
latency one cycle. Errors: ``config`` (``positions`` not in ``1 .. max_positions``, ``tokens``
zero), ``range`` (a value outside int8: it is saturated), ``frame`` (a ``last`` that does not
end a token beat: the beat is closed with zeros, so the engine sees a short token and
resynchronises, see :class:`hw.delta_encoder.DeltaEncoder`).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.delta_encoder import token_layout
from hw.engine import Engine, EngineRegisters, Setting, finish_on_tokens
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "ToTokens"]

#: The adapter's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "to_tokens",
    settings=[Setting("positions", doc="spatial positions per frame (token t has t mod this)"),
              Setting("tokens", doc="tokens in the run (DONE when all have left)")],
    errors=(("range", "a value outside int8 (saturated)"),
            ("frame", "a last that did not end a token beat (closed with zeros)")),
    counters=(("tokens_out", "tokens emitted"),))


class ToTokens(Engine):
    """Gathers activation beats into token beats (see the module docstring).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`.
    o : ``Out(stream)`` of :func:`hw.delta_encoder.token_layout`.
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        if config.bitmap_word % config.lanes:
            raise ValueError("ToTokens needs lanes ({!r}) to divide bitmap_word ({!r})"
                             .format(config.lanes, config.bitmap_word))
        super().__init__(config, {"i": In(stream.Signature(activation_layout(config))),
                                  "o": Out(stream.Signature(token_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, G = cfg.lanes, cfg.bitmap_word // cfg.lanes
        ctl = self.control(m)
        st = ctl.settings
        m.d.comb += ctl.config_ok.eq((st.positions >= 1) & (st.positions <= cfg.max_positions)
                                     & (st.tokens != 0))
        i, o = self.i, self.o
        part = Signal(range(G))
        pos = Signal(range(cfg.max_positions))
        fire_o = o.valid & o.ready
        m.d.comb += i.ready.eq(ctl.running & (~o.valid | o.ready))
        finish_on_tokens(m, ctl, o)
        with m.If(fire_o):
            m.d.sync += o.valid.eq(0)
            with m.If(o.payload.last):
                m.d.sync += pos.eq(Mux(pos == st.positions - 1, 0, pos + 1))
        with m.If(ctl.pulse.start):
            m.d.sync += [pos.eq(0), part.eq(0)]

        take = i.valid & i.ready
        values = [arith.saturate(v, contract.ACT) for v in i.payload.data]
        out_of_range = [~arith.fits(v, contract.ACT) for v in i.payload.data]
        with m.If(take):
            for g in range(G):
                with m.If(part == g):
                    for l in range(V):
                        m.d.sync += o.payload.data[g * V + l].eq(values[l])
                    if g == 0:                       # a new token beat: clear the rest
                        m.d.sync += [o.payload.data[k].eq(0) for k in range(V, G * V)]
            closes = (part == G - 1) | i.payload.last
            m.d.sync += part.eq(Mux(closes, 0, part + 1))
            with m.If(closes):
                m.d.sync += [o.valid.eq(1), o.payload.last.eq(i.payload.last),
                             o.payload.position.eq(pos)]
            m.d.comb += [ctl.raise_error.range.eq(Cat(*out_of_range).any()),
                         ctl.raise_error.frame.eq(i.payload.last & (part != G - 1))]
        return m

