"""The token buffer between the whole model's blocks: a block's output tokens on chip, and the
STA keep list that says which of them go on.

The model (:class:`hw.model.Model`) runs one block per pass. A run of the buffer can *drain*
the tokens it holds (``drain_tokens`` of them) into the next block (``dest`` 0, ``o``) or into
the head (``dest`` 1, ``head``), and *fill* it with the block's ``fill_tokens`` output tokens
from ``i``, both in one run: a middle block's pass drains the previous block's tokens and
fills the buffer with its own, in place. A drain sends every held token in order, or, with
``listed`` set, the tokens of the keep list that the host loaded in between through
``keep_load`` (STA: the host reads the stage block's reports, selects with
:class:`golden.sta.STAPruner` and sends back only the indices of the tokens it keeps, not the
tokens). A drain without a fill keeps the tokens, so the same tokens can be drained again.

* **Fill** (``fill_tokens`` > 0): tokens of ``d`` channels from ``i``, ``d / lanes`` beats
  each, stored at ``token * (max_d / lanes) + beat``; the held tokens restart at START.
* **Drain** (``drain_tokens`` > 0): tokens out, ``d / lanes`` beats each, ``last`` on the
  final one.
* **In place**: fill token ``t`` is written only once the drain has read every token it
  still needs at or below slot ``t`` (it has issued more than ``t`` tokens, or all of them:
  a listed drain reads ascending indices, the ``j``-th at least ``j``). Until then ``i``
  stalls. In the model the block's first output token comes only after attention has seen
  every key, so the stall never happens there; it makes the buffer correct for any order.
* DONE when ``fill_tokens`` tokens have come in and ``drain_tokens`` have left.
* **Keep list**: token indices, one a beat, loaded while idle (``reset_load`` restarts it);
  ascending, each index below the tokens held. It applies to the whole clip's token set, in
  the order STA keeps tokens: frame group after frame group, each group's kept tokens in
  token order (:meth:`golden.sta.STAPruner.prune`), so it is the groups' lists concatenated.

Errors (``config``: START refused, nothing runs, the held tokens and the list are kept):

* ``config``: ``d`` not a multiple of lanes in ``lanes .. max_d``; ``fill_tokens`` and
  ``drain_tokens`` both 0, or one past ``max_tokens``; a drain of more tokens than held; a
  listed drain whose list does not hold exactly ``drain_tokens`` entries (the wrong count),
  whose last (largest) index is not below the tokens held (out of range), or that had an
  ``order`` error since ``reset_load``;
* ``order`` (on load): an index not above the one before it (a duplicate or an unsorted list),
  or at or past ``max_tokens``; the list is marked bad until ``reset_load``;
* ``token`` (fill): a ``last`` that disagreed with ``d / lanes`` beats (the beat counter
  resynchronises on ``last``; the token is stored as it came).

Throughput: one beat a cycle in and out. Latency: a drain's first beat two cycles after START
(a synchronous block-RAM read, held while ``o`` stalls).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.engine import Engine, EngineRegisters, Setting, token_width
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "TokenBuffer", "keep_load_layout"]

#: :class:`TokenBuffer`'s registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "token_buffer",
    settings=[Setting("d", doc="token width d (a multiple of lanes, at most max_d)"),
              Setting("fill_tokens", doc="tokens filled from i (0: no fill; at most max_tokens)"),
              Setting("drain_tokens", doc="tokens drained (0: no drain; at most the tokens held)"),
              Setting("listed", 1, doc="drain: 1: the keep list's tokens, 0: every held one"),
              Setting("dest", 1, doc="drain: 0: o (the next block), 1: head")],
    errors=(("order", "a keep-list index not above the one before it, or past max_tokens "
                      "(the list is bad until reset_load)"),
            ("token", "a token's last disagreed with d / lanes beats")),
    counters=(("tokens_in", "tokens filled (after a fill: the tokens held)"),
              ("tokens_out", "tokens drained")),
    pulses=(("reset_load", "restart the keep list at entry 0"),))


def keep_load_layout(config):
    """One ``keep_load`` beat: the index of a kept token among the tokens held."""
    return data.StructLayout({"index": unsigned(config.column_bits)})


class TokenBuffer(Engine):
    """A block's output tokens on chip, drained whole or by a keep list (module docstring).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`: the fill.
    o, head : ``Out(stream)`` of the same layout: the drain (setting ``dest``).
    keep_load : ``In(stream)`` of :func:`keep_load_layout`: the keep list, while idle.
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout)),
                                  "head": Out(stream.Signature(layout)),
                                  "keep_load": In(stream.Signature(keep_load_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        stride = cfg.max_d // cfg.lanes
        ctl = self.control(m)
        st = ctl.settings
        beats, width_ok = token_width(m, ctl, cfg)
        m.submodules.tokens = mem = Memory(shape=activation_layout(cfg).members["data"],
                                           depth=cfg.max_tokens * stride, init=[])
        held = Signal(range(cfg.max_tokens + 1))    # tokens filled (the fill's write token)
        keep, keep_ok = self._keep_list(m, ctl, held)
        filling, draining = st.fill_tokens != 0, st.drain_tokens != 0
        m.d.comb += ctl.config_ok.eq(
            width_ok & (filling | draining) & (st.fill_tokens <= cfg.max_tokens)
            & (st.drain_tokens <= held) & (~draining | ~st.listed | keep_ok))
        issued = self._drain(m, ctl, mem, beats, keep)

        # Fill: beat `beat` of token `held` at held * stride + beat, once the drain is past it.
        i, wp = self.i, mem.write_port()
        beat = Signal(range(stride))
        take = i.valid & i.ready
        ends = take & i.payload.last
        clear = (issued == st.drain_tokens) | (issued > held)
        m.d.comb += [i.ready.eq(ctl.running & (ctl.counters.tokens_in < st.fill_tokens) & clear),
                     wp.addr.eq(held * stride + beat), wp.data.eq(i.payload.data),
                     wp.en.eq(take), ctl.count.tokens_in.eq(ends),
                     ctl.raise_error.token.eq(take & (i.payload.last != (beat == beats - 1)))]
        with m.If(take):
            m.d.sync += beat.eq(Mux(i.payload.last, 0, beat + 1))
        with m.If(ctl.pulse.start):
            m.d.sync += beat.eq(0)
        # A fill restarts the held tokens; a drain alone (or a refused START) keeps them.
        with m.If(ctl.pulse.start & ctl.config_ok & filling):
            m.d.sync += held.eq(0)
        with m.Elif(ends):
            m.d.sync += held.eq(held + 1)
        m.d.comb += ctl.finished.eq((ctl.counters.tokens_out == st.drain_tokens)
                                    & (ctl.counters.tokens_in == st.fill_tokens))
        return m

    def _drain(self, m, ctl, mem, beats, keep):
        """Read token ``keep(j)`` (or ``j``) beat by beat into ``o`` or ``head``, the read port
        enabled whenever the output register can move; returns ``j``, the tokens whose every
        beat has been read."""
        cfg = self._config
        stride = cfg.max_d // cfg.lanes
        st = ctl.settings
        rp = mem.read_port()
        valid, last = Signal(), Signal()           # of the beat in the read port
        j = Signal(range(cfg.max_tokens + 1))      # drained tokens issued
        beat = Signal(range(stride))
        m.d.comb += keep.addr.eq(j)
        ports = (self.o, self.head)
        ready = Mux(st.dest, self.head.ready, self.o.ready)
        advance = ~valid | ready
        issue = ctl.running & (j < st.drain_tokens) & advance
        m.d.comb += [rp.addr.eq(Mux(st.listed, keep.data.index, j) * stride + beat), rp.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [valid.eq(issue), last.eq(beat == beats - 1)]
        with m.If(issue):
            m.d.sync += beat.eq(Mux(beat == beats - 1, 0, beat + 1))
            with m.If(beat == beats - 1):
                m.d.sync += j.eq(j + 1)
        with m.If(ctl.pulse.start):
            m.d.sync += [j.eq(0), beat.eq(0), valid.eq(0)]
        for k, port in enumerate(ports):
            m.d.comb += [port.valid.eq(valid & (st.dest == k)), port.payload.data.eq(rp.data),
                         port.payload.last.eq(last)]
        m.d.comb += ctl.count.tokens_out.eq(valid & ready & last)
        return j

    def _keep_list(self, m, ctl, held):
        """The keep list: ``(read port, ok)``: its asynchronous read port (``max_tokens`` small
        words; the drain sets the address), and whether the list may be drained now."""
        cfg = self._config
        m.submodules.keep = mem = Memory(shape=keep_load_layout(cfg), depth=cfg.max_tokens,
                                         init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        fill = Signal(range(cfg.max_tokens + 1))
        last = Signal(cfg.column_bits)              # the last index loaded
        bad = Signal()
        load = self.keep_load
        idx = load.payload.index
        take = load.valid & load.ready
        wrong = take & (((fill != 0) & (idx <= last)) | (idx >= cfg.max_tokens)
                        | (fill == cfg.max_tokens))
        m.d.comb += [load.ready.eq(~ctl.running), wp.addr.eq(fill), wp.data.eq(load.payload),
                     wp.en.eq(take & ~wrong), ctl.raise_error.order.eq(wrong)]
        with m.If(ctl.pulse.reset_load):
            m.d.sync += [fill.eq(0), bad.eq(0)]
        with m.Elif(take):
            m.d.sync += last.eq(idx)
            with m.If(wrong):
                m.d.sync += bad.eq(1)
            with m.Else():
                m.d.sync += fill.eq(fill + 1)
        ok = ~bad & (fill == ctl.settings.drain_tokens) & (last < held)
        return rp, ok
