"""Positional embedding add: the embedding's RESID tokens plus a loaded per-token table.

The integer model (:meth:`golden.intvidt.IntVidT.tokens`) adds its positional embedding to the
tubelet embedding in RESID, saturating: token ``t``, channel ``c`` becomes
``RESID.saturate(x[t, c] + pos[t, c])``. :class:`PosAdd` does that on a stream of
:func:`hw.linear_engine.activation_layout` beats: beat ``b`` of token ``t`` adds word
``t * d / lanes + b`` of its table.

* **Loading** (while not running): ``p_load`` takes the table in token-major order, ``lanes``
  channels a beat (:func:`pos_words`); ``reset_load`` restarts at word 0; words past
  ``max_tokens * max_d / lanes`` are dropped. The run needs ``tokens * d / lanes`` words
  loaded since the last ``reset_load`` (``config`` otherwise).
* **Run**: ``d`` and ``tokens`` set, START; DONE once ``tokens`` tokens have left.
* **Errors**: ``config`` (``d`` not a multiple of lanes in ``lanes .. max_d``, ``tokens`` 0 or
  past ``max_tokens``, table too short); ``token`` (a token's ``last`` disagreed with
  ``d / lanes`` beats: a short token skips the rest of its table words, so the next token
  adds its own; a long token's surplus beats add the following words). Never a hang: the run
  ends after ``tokens`` tokens (beats with ``last``).

Throughput one beat a cycle, latency one cycle (the table read is the output register).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.engine import (Engine, EngineRegisters, Setting, finish_on_tokens, token_gate,
                       token_width)
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "PosAdd", "pos_load_layout", "pos_words"]

#: :class:`PosAdd`'s registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "pos_add",
    settings=[Setting("d", doc="token width d (a multiple of lanes, at most max_d)"),
              Setting("tokens", doc="tokens in the run (at most max_tokens)")],
    errors=(("token", "a token's last disagreed with d / lanes beats"),),
    counters=(("tokens_out", "tokens emitted"),),
    pulses=(("reset_load", "restart the table load address at word 0"),))


def pos_load_layout(config):
    """One ``p_load`` beat: ``lanes`` RESID table values."""
    return data.StructLayout({"data": data.ArrayLayout(arith.shape_of(contract.RESID),
                                                       config.lanes)})


def pos_words(config, pos):
    """The ``p_load`` beats of a positional table ``pos`` ``[N][d]`` (nested lists)."""
    V = config.lanes
    return [{"data": [int(v) for v in row[s:s + V]]} for row in pos
            for s in range(0, len(row), V)]


class PosAdd(Engine):
    """``RESID.saturate(x + pos[t])`` on every token (see the module docstring).

    Attributes
    ----------
    i, o : :func:`hw.linear_engine.activation_layout` streams of RESID tokens.
    p_load : ``In(stream)`` of :func:`pos_load_layout`.
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout)),
                                  "p_load": In(stream.Signature(pos_load_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V = cfg.lanes
        W = cfg.max_d // V                      # most beats of a token
        depth = cfg.max_tokens * W
        ctl = self.control(m)
        st = ctl.settings
        m.submodules.table = table = Memory(shape=pos_load_layout(cfg), depth=depth, init=[])

        fill = Signal(range(depth + 1))
        wp = table.write_port()
        load = self.p_load
        take_load = load.valid & load.ready & (fill < depth)
        m.d.comb += [load.ready.eq(~ctl.running), wp.addr.eq(fill), wp.data.eq(load.payload),
                     wp.en.eq(take_load)]
        with m.If(ctl.pulse.reset_load):
            m.d.sync += fill.eq(0)
        with m.Elif(take_load):
            m.d.sync += fill.eq(fill + 1)

        words, d_ok = token_width(m, ctl, cfg)
        m.d.comb += ctl.config_ok.eq(
            d_ok & (st.tokens != 0) & (st.tokens <= cfg.max_tokens) & (st.tokens * words <= fill))

        i, o = self.i, self.o
        advance = ~o.valid | o.ready
        take = i.valid & i.ready
        m.d.comb += i.ready.eq(token_gate(m, ctl, take & i.payload.last) & advance)
        addr = Signal(range(depth))              # table word of the next beat
        beat = Signal(range(W))
        final = beat == words - 1
        rp = table.read_port()
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(advance)]
        with m.If(take):
            m.d.sync += [addr.eq(addr + 1), beat.eq(Mux(final | i.payload.last, 0, beat + 1))]
            # A token that ends early skips the rest of its table words.
            with m.If(i.payload.last & ~final):
                m.d.sync += addr.eq(addr + (words - beat))
        with m.If(ctl.pulse.start):
            m.d.sync += [addr.eq(0), beat.eq(0)]
        m.d.comb += ctl.raise_error.token.eq(take & (i.payload.last != final))

        # Stage 1: the beat waits one cycle beside its table word (the read port's output).
        held = Signal(activation_layout(cfg))
        with m.If(advance):
            m.d.sync += [o.valid.eq(take), held.eq(i.payload)]
        m.d.comb += o.payload.last.eq(held.last)
        for lane in range(V):
            m.d.comb += o.payload.data[lane].eq(arith.saturate(held.data[lane] + rp.data.data[lane],
                                                               contract.RESID))
        finish_on_tokens(m, ctl, o)
        return m
