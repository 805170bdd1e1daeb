"""Activation beats to a linear engine's token beats: the adapter in front of every projection.

The element-wise stages (:mod:`hw.layernorm`, :mod:`hw.gelu`) and the transposing buffer
emit :func:`hw.linear_engine.activation_layout` beats (``lanes`` values in int16 fields); a
:class:`hw.linear_engine.LinearEngine` takes :func:`hw.delta_encoder.token_layout` beats
(``bitmap_word`` int8 values and the token's spatial position, the key of its delta
reference). :class:`ToTokens` gathers ``bitmap_word / lanes`` activation beats into one token
beat and numbers the tokens: token ``t`` of a run has position ``t mod positions`` (frame-major
tokens of ``positions`` spatial positions per frame, the order of a whole clip), or, with
``listed`` set, entry ``t`` of a position list loaded through ``pos_load`` (the ragged token
set that STA pruning leaves: each kept token keeps its spatial position).

Throughput: one activation beat a cycle (a token beat every ``bitmap_word / lanes`` cycles);
latency one cycle. Errors: ``config`` (``positions`` not in ``1 .. max_positions``, ``tokens``
zero; listed: ``tokens`` more than the list entries loaded since ``reset_load``), ``range`` (a
value outside int8: it is saturated; a listed position at or past ``max_positions``: position 0
is used), ``frame`` (a ``last`` that does not end a token beat: the beat is closed with zeros,
so the engine sees a short token and resynchronises, see
:class:`hw.delta_encoder.DeltaEncoder`).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.delta_encoder import token_layout
from hw.engine import Engine, EngineRegisters, Setting, finish_on_tokens
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "ToTokens", "position_load_layout"]

#: The adapter's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "to_tokens",
    settings=[Setting("positions", doc="spatial positions per frame (token t has t mod this)"),
              Setting("tokens", doc="tokens in the run (DONE when all have left)"),
              Setting("listed", 1, doc="1: token t has entry t of the loaded position list")],
    errors=(("range", "a value outside int8 (saturated), or a listed position at or past "
                      "max_positions (0 used)"),
            ("frame", "a last that did not end a token beat (closed with zeros)")),
    counters=(("tokens_out", "tokens emitted"),),
    pulses=(("reset_load", "restart the position list at entry 0"),))


def position_load_layout(config):
    """One ``pos_load`` beat: the spatial position of the next token of the list."""
    return data.StructLayout({"position": unsigned(config.position_bits)})


class ToTokens(Engine):
    """Gathers activation beats into token beats (see the module docstring).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`.
    o : ``Out(stream)`` of :func:`hw.delta_encoder.token_layout`.
    pos_load : ``In(stream)`` of :func:`position_load_layout`: the position list, one entry
        per token in order, while idle (``max_tokens`` entries; surplus ones are dropped).
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        if config.bitmap_word % config.lanes:
            raise ValueError("ToTokens needs lanes ({!r}) to divide bitmap_word ({!r})"
                             .format(config.lanes, config.bitmap_word))
        super().__init__(config, {
            "i": In(stream.Signature(activation_layout(config))),
            "o": Out(stream.Signature(token_layout(config))),
            "pos_load": In(stream.Signature(position_load_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, G = cfg.lanes, cfg.bitmap_word // cfg.lanes
        ctl = self.control(m)
        st = ctl.settings
        listed_pos, list_ok, tok = self._position_list(m, ctl)
        m.d.comb += ctl.config_ok.eq((st.positions >= 1) & (st.positions <= cfg.max_positions)
                                     & (st.tokens != 0) & (~st.listed | list_ok))
        i, o = self.i, self.o
        part = Signal(range(G))
        pos = Signal(range(cfg.max_positions))
        fire_o = o.valid & o.ready
        m.d.comb += i.ready.eq(ctl.running & (~o.valid | o.ready))
        finish_on_tokens(m, ctl, o)
        with m.If(fire_o):
            m.d.sync += o.valid.eq(0)
            with m.If(o.payload.last):
                m.d.sync += [pos.eq(Mux(pos == st.positions - 1, 0, pos + 1)), tok.eq(tok + 1)]
        with m.If(ctl.pulse.start):
            m.d.sync += [pos.eq(0), part.eq(0), tok.eq(0)]

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
            bad_pos = st.listed & (listed_pos >= cfg.max_positions)
            with m.If(closes):
                m.d.sync += [o.valid.eq(1), o.payload.last.eq(i.payload.last),
                             o.payload.position.eq(Mux(st.listed, Mux(bad_pos, 0, listed_pos),
                                                       pos))]
            m.d.comb += [ctl.raise_error.range.eq(Cat(*out_of_range).any() | (closes & bad_pos)),
                         ctl.raise_error.frame.eq(i.payload.last & (part != G - 1))]
        return m

    def _position_list(self, m, ctl):
        """The position list (``max_tokens`` entries, asynchronous read at the token index),
        whether it holds the run's ``tokens``, and the token index."""
        cfg = self._config
        m.submodules.positions = mem = Memory(shape=position_load_layout(cfg),
                                              depth=cfg.max_tokens, init=[])
        fill = Signal(range(cfg.max_tokens + 1))
        tok = Signal(range(cfg.max_tokens + 1))
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")
        load = self.pos_load
        take = load.valid & load.ready & (fill < cfg.max_tokens)
        m.d.comb += [load.ready.eq(~ctl.running), wp.addr.eq(fill), wp.data.eq(load.payload),
                     wp.en.eq(take), rp.addr.eq(tok)]
        with m.If(ctl.pulse.reset_load):
            m.d.sync += fill.eq(0)
        with m.Elif(take):
            m.d.sync += fill.eq(fill + 1)
        return rp.data.position, ctl.settings.tokens <= fill, tok
