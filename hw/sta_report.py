"""STA reports: what the token selection of a pruning stage needs, taken from the block's streams.

STA (:mod:`golden.sta`) scores each token after its stage block from two things: the block's
attention keys averaged over heads (:func:`golden.sta.key_metric`) and the activation
``sum |x|`` of the block's output token (:func:`golden.sta.activation`). Both are exact integer
sums on chip; the selection itself (cosines, softmax, sort: float control decisions) runs in
the host with :mod:`golden.sta`, which needs only these sums (the head mean is the sum over
``heads``, the unit vector is the same):

* :class:`KeyReport` sits on the QKV projection's output: it passes every beat through and,
  with ``report`` set, emits each token's K channels summed over heads
  (:func:`golden.contract.sta_key_sum_format`) on ``keys``, ``head_dim / lanes`` beats a token;
* :class:`ActReport` sits on the block's output: it passes every beat through and, with
  ``report`` set, emits each token's ``sum |x|`` (:func:`golden.contract.sta_activation_format`)
  on ``act``, one beat a token.

With ``report`` clear (a block that is not a stage block) neither emits anything and the host
need not read the ports. A report port that is not read holds the block: the pass-through waits
while the report's output register is full.

Both pass beats through combinationally (no latency, full rate while the report is read).
Errors: :class:`KeyReport` raises ``token`` when a token's ``last`` disagrees with
``3 * heads * head_dim / lanes`` beats (the counters resynchronise on ``last``);
``config`` for settings out of range.
"""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import log2_exact
from hw.engine import Engine, EngineRegisters, Setting, token_gate
from hw.linear_engine import activation_layout

__all__ = ["KEY_REGISTERS", "ACT_REGISTERS", "KeyReport", "ActReport", "act_report_layout"]

_REPORT = Setting("report", 1, doc="1: emit the report (a stage block), 0: pass through only")

#: :class:`KeyReport`'s registers (:mod:`hw.engine`).
KEY_REGISTERS = EngineRegisters(
    "key_report",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)"),
              Setting("heads", doc="heads H"),
              Setting("head_dim", doc="channels per head (a multiple of lanes; H x head_dim "
                                      "at most max_d)"),
              _REPORT],
    errors=(("token", "a QKV token's last disagreed with 3 x heads x head_dim channels"),),
    counters=(("tokens_out", "tokens passed on"), ("reported", "report beats emitted")))

#: :class:`ActReport`'s registers (:mod:`hw.engine`).
ACT_REGISTERS = EngineRegisters(
    "act_report",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)"), _REPORT],
    counters=(("tokens_out", "tokens passed on"), ("reported", "report beats emitted")))


def act_report_layout(config):
    """One ``act`` beat: a token's ``sum |x|``."""
    return data.StructLayout({"sum": arith.shape_of(contract.sta_activation_format(
        config.max_d))})


def _pass_through(m, ctl, i, o, hold):
    """``i`` -> ``o`` combinationally while running and not ``hold``, the run's token count
    gating admission. Returns the fire signal of the passing beat."""
    fire = Signal()
    allow = Signal()
    m.d.comb += [allow.eq(token_gate(m, ctl, fire & i.payload.last) & ~hold),
                 o.valid.eq(i.valid & allow), o.payload.eq(i.payload),
                 i.ready.eq(o.ready & allow), fire.eq(i.valid & i.ready)]
    return fire


def _report_register(m, ctl, port, emit, fields):
    """The report port's output register, loaded with ``fields`` (name -> value or list of
    lane values) when ``emit``."""
    with m.If(port.valid & port.ready):
        m.d.sync += port.valid.eq(0)
    with m.If(emit):
        m.d.sync += port.valid.eq(1)
        for name, value in fields.items():
            if isinstance(value, list):
                m.d.sync += [port.payload[name][k].eq(v) for k, v in enumerate(value)]
            else:
                m.d.sync += port.payload[name].eq(value)
    m.d.comb += ctl.count.reported.eq(port.valid & port.ready)


class KeyReport(Engine):
    """Head sums of the K channels of QKV tokens (see the module docstring).

    Attributes
    ----------
    i, o : :func:`hw.linear_engine.activation_layout` streams of QKV tokens (channels
        ``[q | k | v]``, each ``heads x head_dim``), passed through.
    keys : ``Out(stream)`` of :func:`hw.linear_engine.activation_layout`: per token,
        ``head_dim / lanes`` beats of ``sum_h k[h, j]``, ``last`` on the token's final one.
    csr : registers :data:`KEY_REGISTERS`.

    Throughput one beat a cycle; a ``keys`` beat leaves one cycle after the last head's K beat
    of its channels.
    """

    registers = KEY_REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout)),
                                  "keys": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, W = cfg.lanes, cfg.max_d // cfg.lanes      # W: most words (V channels) of one head
        ctl = self.control(m)
        st = ctl.settings
        m.d.comb += ctl.config_ok.eq(
            (st.tokens != 0) & (st.heads >= 1) & (st.heads <= cfg.max_heads)
            & (st.head_dim >= V) & (st.head_dim[:log2_exact(V)] == 0)
            & (st.heads * st.head_dim <= cfg.max_d))
        words = Signal(range(W + 1))                  # words of one head
        m.d.comb += words.eq(st.head_dim >> log2_exact(V))

        # Position of the next beat in its token: part (q, k, v), head, word.
        part, head, word = Signal(2), Signal(range(cfg.max_heads)), Signal(range(W))
        # Running head sums: lane l of word w (channels w * lanes + l of a head).
        sum_shape = arith.shape_of(contract.sta_key_sum_format(cfg.max_heads))
        acc = [Array(Signal(sum_shape, name=f"acc_{w}_{l}") for w in range(W)) for l in range(V)]
        i = self.i
        beat = i.payload
        is_k = part == 1
        last_head = head == st.heads - 1
        emits = is_k & last_head & st.report
        sums = [Mux(head == 0, 0, acc[l][word]) + beat.data[l] for l in range(V)]
        # The hold depends on the beat's position and the report register (not on valid).
        fire = _pass_through(m, ctl, i, self.o, emits & self.keys.valid & ~self.keys.ready)
        _report_register(m, ctl, self.keys, fire & emits,
                         {"data": sums, "last": word == words - 1})

        final = (part == 2) & last_head & (word == words - 1)
        with m.If(fire):
            with m.If(is_k):
                m.d.sync += [acc[l][word].eq(sums[l]) for l in range(V)]
            with m.If(beat.last | final):
                m.d.sync += [part.eq(0), head.eq(0), word.eq(0)]
            with m.Elif(word == words - 1):
                m.d.sync += word.eq(0)
                with m.If(last_head):
                    m.d.sync += [head.eq(0), part.eq(part + 1)]
                with m.Else():
                    m.d.sync += head.eq(head + 1)
            with m.Else():
                m.d.sync += word.eq(word + 1)
        with m.If(ctl.pulse.start):
            m.d.sync += [part.eq(0), head.eq(0), word.eq(0)]
        m.d.comb += ctl.raise_error.token.eq(fire & (beat.last != final))
        _finish(m, ctl, self.o, self.keys)
        return m


class ActReport(Engine):
    """``sum |x|`` of every token of an activation stream (see the module docstring).

    Attributes
    ----------
    i, o : :func:`hw.linear_engine.activation_layout` streams (RESID tokens), passed through.
    act : ``Out(stream)`` of :func:`act_report_layout`: one beat per token.
    csr : registers :data:`ACT_REGISTERS`.

    Throughput one beat a cycle; the ``act`` beat leaves one cycle after the token's last beat.
    """

    registers = ACT_REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout)),
                                  "act": Out(stream.Signature(act_report_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        st = ctl.settings
        m.d.comb += ctl.config_ok.eq(st.tokens != 0)
        i = self.i
        shape = act_report_layout(self._config).members["sum"]
        total = Signal(shape)
        beat_sum = Signal(shape)
        m.d.comb += beat_sum.eq(sum(Mux(v < 0, -v, v) for v in i.payload.data))
        emits = i.payload.last & st.report
        fire = _pass_through(m, ctl, i, self.o, emits & self.act.valid & ~self.act.ready)
        _report_register(m, ctl, self.act, fire & emits, {"sum": total + beat_sum})
        with m.If(fire):
            m.d.sync += total.eq(Mux(i.payload.last, 0, total + beat_sum))
        with m.If(ctl.pulse.start):
            m.d.sync += total.eq(0)
        _finish(m, ctl, self.o, self.act)
        return m


def _finish(m, ctl, o, report):
    """Count the tokens leaving ``o``; DONE once ``tokens`` have left and the report
    register is empty."""
    m.d.comb += [ctl.count.tokens_out.eq(o.valid & o.ready & o.payload.last),
                 ctl.finished.eq((ctl.counters.tokens_out == ctl.settings.tokens)
                                 & ~report.valid)]
