"""Mean pooling over the tokens of a clip: the head's integer mean, bit-exact.

The integer model's head (:meth:`golden.intvidt.IntVidT.head_forward`) pools the final
LayerNorm's int8 tokens with ``contract.div_half_up(sum over tokens, N)`` per channel, ``N`` the
tokens present (after STA pruning, fewer than the clip's). :class:`MeanPool` takes the run's
``tokens`` tokens of ``d`` channels and then emits one token of ``d`` channels: the means.

* **Sums**: ``d`` running sums in :func:`golden.contract.pooled_sum_format` of ``max_tokens``
  values (exact; no saturation can occur).
* **Division**: one divider, one channel a cycle, after the last token: ``d`` cycles, then the
  token leaves, ``lanes`` channels a beat (each beat waits for its lanes' quotients).
* **Run**: ``d`` and ``tokens`` set, START; DONE once the pooled token has left.
* **Errors**: ``config`` (``d`` not a multiple of lanes in ``lanes .. max_d``, ``tokens`` 0 or
  past ``max_tokens``); ``token`` (a token's ``last`` disagreed with ``d / lanes`` beats: the
  beat counter resynchronises on ``last``); ``range`` (an input outside int8: its saturated
  value is summed).

Throughput: one input beat a cycle; ``d + d / lanes`` cycles (unstalled) from the last input
beat to the end of the output token.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.engine import Engine, EngineRegisters, Setting, token_gate, token_width
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "MeanPool"]

#: :class:`MeanPool`'s registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "mean_pool",
    settings=[Setting("d", doc="token width d (a multiple of lanes, at most max_d)"),
              Setting("tokens", doc="tokens pooled (1 .. max_tokens)")],
    errors=(("token", "a token's last disagreed with d / lanes beats"),
            ("range", "an input value outside int8 (saturated)")),
    counters=(("tokens_in", "tokens taken"), ("tokens_out", "pooled tokens emitted")))


class MeanPool(Engine):
    """Per-channel ``div_half_up(sum, tokens)`` of a run's tokens (see the module docstring).

    Attributes
    ----------
    i, o : :func:`hw.linear_engine.activation_layout` streams (int8 values in the int16 field).
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {"i": In(stream.Signature(layout)),
                                  "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, W = cfg.lanes, cfg.max_d // cfg.lanes
        ctl = self.control(m)
        st = ctl.settings
        words, d_ok = token_width(m, ctl, cfg)
        m.d.comb += ctl.config_ok.eq(
            d_ok & (st.tokens != 0) & (st.tokens <= cfg.max_tokens))
        sum_shape = arith.shape_of(contract.pooled_sum_format(cfg.max_tokens))
        sums = [Array(Signal(sum_shape, name=f"sum_{w}_{l}") for w in range(W)) for l in range(V)]

        i, o = self.i, self.o
        take = i.valid & i.ready
        word = Signal(range(W))
        lane = Signal(range(V))
        first = Signal(init=1)                      # the next beat opens the run's first token
        final = word == words - 1
        m.d.comb += ctl.raise_error.token.eq(take & (i.payload.last != final))
        values = [arith.saturate(v, contract.ACT) for v in i.payload.data]
        m.d.comb += ctl.raise_error.range.eq(
            take & Cat(*[~arith.fits(v, contract.ACT) for v in i.payload.data]).any())
        m.d.comb += [ctl.count.tokens_in.eq(take & i.payload.last),
                     ctl.count.tokens_out.eq(o.valid & o.ready & o.payload.last)]
        # One divider: the lane's sum over the token count (kept to max_tokens' width).
        count = Signal(range(cfg.max_tokens + 1))
        num = Signal(sum_shape)
        quotient = Signal.like(o.payload.data[0])
        m.d.comb += [count.eq(st.tokens), num.eq(sums[0][word])]
        for l in range(1, V):
            with m.If(lane == l):
                m.d.comb += num.eq(sums[l][word])
        m.d.comb += quotient.eq(arith.div_half_up(num, count))

        with m.FSM():
            with m.State("SUM"):
                m.d.comb += i.ready.eq(token_gate(m, ctl, take & i.payload.last))
                with m.If(take):
                    m.d.sync += [sums[l][word].eq(Mux(first, 0, sums[l][word]) + values[l])
                                 for l in range(V)]
                    m.d.sync += word.eq(Mux(final | i.payload.last, 0, word + 1))
                    with m.If(final | i.payload.last):
                        m.d.sync += first.eq(0)
                with m.If(ctl.running & (ctl.counters.tokens_in == st.tokens) & ~first
                          & (ctl.counters.tokens_out == 0)):
                    m.d.sync += [word.eq(0), lane.eq(0)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.sync += o.payload.data[lane].eq(quotient)
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == V - 1):
                    m.d.sync += [o.valid.eq(1), o.payload.last.eq(final), lane.eq(0)]
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(o.ready):
                    m.d.sync += [o.valid.eq(0), word.eq(word + 1)]
                    with m.If(o.payload.last):
                        m.d.sync += word.eq(0)
                        m.next = "SUM"
                    with m.Else():
                        m.next = "DIVIDE"
        # Sums stay put between runs: the first beat of a run overwrites them.
        with m.If(ctl.pulse.start):
            m.d.sync += [first.eq(1), word.eq(0)]
        m.d.comb += ctl.finished.eq(ctl.counters.tokens_out == 1)
        return m
