"""LayerNorm stage: :func:`golden.contract.layernorm_row` on every token, bit-exact.

Data flow of one token of ``d`` channels (RESID int16 in, int8 out)::

    i (lanes per beat) -> writer: one element a cycle into a row buffer slot, running
      T = sum(x), S2 = sum(x**2)  -> row statistics: V = d * S2 - T**2 (= sum(c**2) // d, see
      the contract), sigma = max(1, isqrt(V)), recip = 2**LN_RECIP_BITS // sigma
      -> reader: one element a cycle from the slot: c = d * x - T, n = round_shift(c * recip,
         LN_RECIP_BITS - LN_FRAC_BITS), a = gamma * n + beta, out = requantize(a, mult, shift)
      -> packer: lanes elements per o beat

One element a cycle is enough: the stage feeds the shared PE array, which needs at least
``d * d_out / (rows * lanes)`` cycles for the projection that follows (QKV of the benchmark:
192 cycles a token dense against LayerNorm's 64), so a serial datapath costs one wide
multiplier (``c * recip``) instead of ``lanes``.

The row buffer has two token slots: the writer fills one while the reader drains the other, and
the row statistics (a sequential square root, one result bit a cycle, and a restoring
division, one quotient bit a cycle: :func:`stats_cycles` in all) run in between.

Throughput: ``max(d, stats_cycles)`` cycles a token in steady state; ``lanes`` cycles per input
beat. Latency: first input beat to first output beat ``d + stats_cycles + 8`` cycles.

Parameters (``gamma`` int8, ``beta`` :data:`golden.contract.LN_BETA`, ``lanes`` channels per
beat) arrive on ``p_load`` while the stage is idle, in channel order from address 0 (CTRL pulse
``reset_load`` restarts the address). Settings: ``d``, ``tokens``, ``mult``, ``shift``.

Errors: ``config`` (``d`` not a multiple of ``lanes`` in ``lanes .. max_d``, or ``tokens``
zero); ``token``: a token whose ``last`` is early (its missing channels are zero) or missing
(beat ``d / lanes`` ends the token, and the beats after it are dropped up to the next ``last``);
every token still leaves as ``d / lanes`` well-formed beats. START resets the datapath.
"""

from types import SimpleNamespace

from amaranth.hdl import Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import bits_for, log2_exact
from hw.cycles import layernorm_stats_cycles
from hw.engine import (LAYER, Engine, EngineRegisters, Setting, finish_on_tokens, layer_part,
                       token_width)
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "LayerNorm", "RowStats", "ln_param_layout", "ln_param_words",
           "ln_widths", "stats_cycles"]

_X = arith.shape_of(contract.RESID)


#: The LayerNorm stage's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "layernorm",
    settings=[
        Setting("d", doc="token width d (a multiple of lanes, at most max_d)"),
        Setting("tokens", doc="tokens in the run (DONE when all have left)"),
        Setting("mult", contract.REQ_MULT.bits, doc="output requantisation multiplier"),
        Setting("shift", contract.REQ_SHIFT.bits, doc="output requantisation shift"),
        LAYER,
    ],
    errors=(("token", "a token's last beat came early or not at all"),),
    counters=(("tokens_out", "tokens emitted"),),
    pulses=(("reset_load", "restart the layer's parameter load address"),))


def ln_widths(config):
    """Bit widths of the statistics for tokens of up to ``max_d`` RESID values
    (:func:`golden.contract.layernorm_widths`)."""
    return contract.layernorm_widths(config.max_d)


def ln_param_layout(config):
    """One ``p_load`` beat: ``gamma`` and ``beta`` of ``lanes`` consecutive channels."""
    V = config.lanes
    return data.StructLayout({
        "gamma": data.ArrayLayout(arith.shape_of(contract.WEIGHT), V),
        "beta": data.ArrayLayout(arith.shape_of(contract.LN_BETA), V)})


def ln_param_words(config, gamma, beta):
    """The ``p_load`` beats of a LayerNorm's ``gamma`` and ``beta`` (lists of ``d`` ints)."""
    V = config.lanes
    if len(gamma) != len(beta) or len(gamma) % V:
        raise ValueError("gamma and beta must have one length, a multiple of lanes ({}), not "
                         "{!r} and {!r}".format(V, len(gamma), len(beta)))
    return [{"gamma": list(gamma[s:s + V]), "beta": list(beta[s:s + V])}
            for s in range(0, len(gamma), V)]


class RowStats(wiring.Component):
    """``recip = 2**LN_RECIP_BITS // max(1, isqrt(d * sumsq - total**2))`` of one token.

    ``i`` takes ``{total, sumsq}`` when idle; ``o`` offers ``{total, recip}`` until taken.
    Sequential: one cycle for the variance, ``root`` cycles of square root (two radicand bits
    a cycle), ``recip`` cycles of division, one output cycle: `stats_cycles` from the
    taken input to the output. ``d`` must be held during the computation.
    """

    def __init__(self, config):
        w = self._w = ln_widths(config)
        self._config = config
        super().__init__({
            "d": In(bits_for(config.max_d + 1)),
            "i": In(stream.Signature(data.StructLayout(
                {"total": signed(w["total"]), "sumsq": unsigned(w["sumsq"])}))),
            "o": Out(stream.Signature(data.StructLayout(
                {"total": signed(w["total"]), "recip": unsigned(w["recip"])}))),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._w
        rad = Signal(2 * w["root"])                 # radicand, consumed two bits a cycle
        rem = Signal(w["root"] + 2)
        root = Signal(w["root"])
        sigma = Signal(w["root"])
        drem = Signal(w["root"] + 1)
        step = Signal(range(max(w["root"], w["recip"]) + 1))
        quo = Signal(w["recip"])
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    p = self.i.payload
                    var = self.d * p.sumsq - p.total * p.total
                    m.d.sync += [rad.eq(var[:w["var"]]), rem.eq(0), root.eq(0), step.eq(0),
                                 self.o.payload.total.eq(self.i.payload.total)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                # Digit-by-digit square root: the next two radicand bits join the remainder;
                # the trial subtrahend is 4 * root + 1.
                cur = (rem << 2) | rad[-2:]
                trial = (root << 2) | 1
                fit = cur >= trial
                m.d.sync += [rad.eq(rad << 2), rem.eq(Mux(fit, cur - trial, cur)),
                             root.eq((root << 1) | fit), step.eq(step + 1)]
                with m.If(step == w["root"] - 1):
                    m.d.sync += step.eq(0)
                    m.next = "SIGMA"
            with m.State("SIGMA"):
                m.d.sync += [sigma.eq(Mux(root == 0, 1, root)), drem.eq(0)]
                m.next = "DIV"
            with m.State("DIV"):
                # Restoring division of 2**LN_RECIP_BITS: its only one bit enters first.
                cur = (drem << 1) | (step == 0)
                fit = cur >= sigma
                m.d.sync += [drem.eq(Mux(fit, cur - sigma, cur)), quo.eq((quo << 1) | fit),
                             step.eq(step + 1)]
                with m.If(step == w["recip"] - 1):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.recip.eq(quo)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


#: Cycles of :class:`RowStats` from its input handshake to its output being valid (the cycle
#: model's :func:`hw.cycles.layernorm_stats_cycles`).
stats_cycles = layernorm_stats_cycles


class LayerNorm(Engine):
    """Integer LayerNorm stage (see the module docstring for protocol, errors and timing).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout`: RESID tokens, ``d /
        lanes`` beats each.
    o : ``Out(stream)`` of the same layout: int8 results (sign-extended), ``d / lanes`` beats
        a token, ``last`` on its final beat.
    p_load : ``In(stream)`` of :func:`ln_param_layout`.
    csr : registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        log2_exact(config.lanes)
        super().__init__(config, {
            "i": In(stream.Signature(activation_layout(config))),
            "o": Out(stream.Signature(activation_layout(config))),
            "p_load": In(stream.Signature(ln_param_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        ctl = self.control(m)
        st = ctl.settings
        V, D = cfg.lanes, cfg.max_d
        base, layer_ok = layer_part(m, ctl, cfg, D // V)
        _, d_ok = token_width(m, ctl, cfg)
        m.d.comb += ctl.config_ok.eq(d_ok & (st.tokens != 0) & layer_ok)

        # Parameters (max_layers parts) survive START; only the datapath restarts.
        m.submodules.params = params = Memory(shape=ln_param_layout(cfg),
                                              depth=cfg.max_layers * D // V, init=[])
        p_addr = Signal(range(D // V))
        wp = params.write_port()
        m.d.comb += [self.p_load.ready.eq(~ctl.running), wp.addr.eq(base + p_addr),
                     wp.data.eq(self.p_load.payload),
                     wp.en.eq(self.p_load.valid & ~ctl.running & layer_ok)]
        with m.If(ctl.pulse.reset_load):
            m.d.sync += p_addr.eq(0)
        with m.Elif(wp.en):
            m.d.sync += p_addr.eq(Mux(p_addr == D // V - 1, 0, p_addr + 1))

        dp = _Datapath(cfg)
        m.submodules.datapath = ResetInserter(ctl.pulse.start)(dp)
        rp = params.read_port()
        wiring.connect(m, wiring.flipped(self.i), dp.i)
        wiring.connect(m, dp.o, wiring.flipped(self.o))
        m.d.comb += [dp.running.eq(ctl.running), dp.d.eq(st.d), dp.mult.eq(st.mult),
                     dp.shift.eq(st.shift),
                     rp.addr.eq(base + dp.p_addr), rp.en.eq(dp.p_en), dp.p_data.eq(rp.data),
                     ctl.raise_error.token.eq(dp.token_error)]
        finish_on_tokens(m, ctl, self.o)
        return m


class _Datapath(wiring.Component):
    """Writer, row statistics, reader pipeline and packer of :class:`LayerNorm`."""

    def __init__(self, config):
        self._config = config
        self._w = ln_widths(config)
        super().__init__({
            "i": In(stream.Signature(activation_layout(config))),
            "o": Out(stream.Signature(activation_layout(config))),
            "running": In(1), "d": In(bits_for(config.max_d + 1)),
            "mult": In(arith.shape_of(contract.REQ_MULT)),
            "shift": In(arith.shape_of(contract.REQ_SHIFT)),
            "p_addr": Out(range(config.max_d // config.lanes)), "p_en": Out(1),
            "p_data": In(ln_param_layout(config)),
            "token_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.buf = buf = Memory(shape=_X, depth=2 * cfg.max_d, init=[])
        m.submodules.stats = stats = RowStats(cfg)
        ns = SimpleNamespace(buf=buf, stats=stats, full=Signal(2))
        m.d.comb += stats.d.eq(self.d)
        self._writer(m, ns)
        self._reader(m, ns)
        return m

    def _writer(self, m, ns):
        """Input beats -> one element a cycle into the row buffer; sums to the statistics."""
        cfg, w = self._config, self._w
        V = cfg.lanes
        inp, stats = self.i, ns.stats
        lane = Signal(range(V))
        idx = Signal(range(cfg.max_d))
        slot = Signal()
        total = Signal(signed(w["total"]))
        sumsq = Signal(unsigned(w["sumsq"]))
        wp = ns.buf.write_port()
        x = Signal(_X)
        free = ~ns.full.bit_select(slot, 1) & ~stats.i.valid
        final = idx == self.d - 1
        m.d.comb += wp.addr.eq(_slot_addr(slot, idx, cfg.max_d))

        def element(value):
            """Write ``value`` at ``idx``; close the token at its final element."""
            m.d.comb += [wp.data.eq(value), wp.en.eq(1)]
            new_total, new_sumsq = total + value, sumsq + value * value
            m.d.sync += [idx.eq(idx + 1), total.eq(new_total), sumsq.eq(new_sumsq)]
            with m.If(final):
                m.d.sync += [idx.eq(0), total.eq(0), sumsq.eq(0), slot.eq(~slot),
                             ns.full.bit_select(slot, 1).eq(1), stats.i.valid.eq(1),
                             stats.i.payload.total.eq(new_total),
                             stats.i.payload.sumsq.eq(new_sumsq)]

        with m.If(stats.i.ready):
            m.d.sync += stats.i.valid.eq(0)
        m.d.comb += x.eq(inp.payload.data[lane])
        m.d.sync += self.token_error.eq(0)          # a one-cycle pulse
        with m.FSM():
            with m.State("WRITE"):
                with m.If(inp.valid & self.running & free):
                    beat_end = lane == V - 1
                    m.d.comb += inp.ready.eq(beat_end)
                    element(x)
                    m.d.sync += lane.eq(lane + 1)
                    with m.If(beat_end):
                        m.d.sync += lane.eq(0)
                        with m.If(inp.payload.last & ~final):
                            m.d.sync += self.token_error.eq(1)
                            m.next = "PAD"
                        with m.If(~inp.payload.last & final):
                            m.d.sync += self.token_error.eq(1)
                            m.next = "DROP"
            with m.State("PAD"):
                with m.If(free):
                    element(0)
                    with m.If(final):
                        m.next = "WRITE"
            with m.State("DROP"):
                m.d.comb += inp.ready.eq(1)
                with m.If(inp.valid & inp.payload.last):
                    m.next = "WRITE"

    def _reader(self, m, ns):
        """Row buffer -> normalise, scale, requantise (six register stages) -> packer."""
        cfg, w = self._config, self._w
        V = cfg.lanes
        o, stats = self.o, ns.stats
        adv = ~o.valid | o.ready
        rp = ns.buf.read_port()
        m.d.comb += [rp.en.eq(adv), self.p_en.eq(adv)]

        idx = Signal(range(cfg.max_d))
        slot = Signal()
        active = Signal()
        tot0 = Signal(signed(w["total"]))
        rec0 = Signal(unsigned(w["recip"]))
        issue = active & adv
        last_issue = issue & (idx == self.d - 1)
        take = stats.o.valid & adv & (~active | last_issue)
        m.d.comb += [stats.o.ready.eq(take), rp.addr.eq(_slot_addr(slot, idx, cfg.max_d)),
                     self.p_addr.eq(idx >> log2_exact(V))]
        with m.If(issue):
            m.d.sync += idx.eq(idx + 1)
        with m.If(last_issue):
            m.d.sync += [idx.eq(0), active.eq(0), slot.eq(~slot),
                         ns.full.bit_select(slot, 1).eq(0)]
        with m.If(take):
            m.d.sync += [active.eq(1), tot0.eq(stats.o.payload.total),
                         rec0.eq(stats.o.payload.recip)]

        def stage(**fields):
            return Signal(data.StructLayout({"valid": 1, "last": 1, **fields}))

        gamma_s = arith.shape_of(contract.WEIGHT)
        beta_s = arith.shape_of(contract.LN_BETA)
        s1 = stage(lane=range(V), total=signed(w["total"]), recip=unsigned(w["recip"]))
        s2 = stage(c=signed(w["centred"]), recip=unsigned(w["recip"]), gamma=gamma_s,
                   beta=beta_s)
        s3 = stage(p=signed(w["centred"] + w["recip"]), gamma=gamma_s, beta=beta_s)
        a_bits = w["centred"] + w["recip"] + 1 - (contract.LN_RECIP_BITS - contract.LN_FRAC_BITS)
        s4 = stage(a=signed(a_bits + contract.WEIGHT.bits + 1))
        s5 = stage(prod=signed(len(s4.a) + contract.REQ_MULT.bits))
        with m.If(adv):
            m.d.sync += [s1.valid.eq(issue), s1.last.eq(idx == self.d - 1),
                         s1.lane.eq(idx[:log2_exact(V)]), s1.total.eq(tot0), s1.recip.eq(rec0)]
            m.d.sync += [s2.valid.eq(s1.valid), s2.last.eq(s1.last),
                         s2.c.eq(self.d * rp.data - s1.total), s2.recip.eq(s1.recip),
                         s2.gamma.eq(self.p_data.gamma[s1.lane]),
                         s2.beta.eq(self.p_data.beta[s1.lane])]
            m.d.sync += [s3.valid.eq(s2.valid), s3.last.eq(s2.last), s3.p.eq(s2.c * s2.recip),
                         s3.gamma.eq(s2.gamma), s3.beta.eq(s2.beta)]
            n = arith.round_shift(s3.p, Const(contract.LN_RECIP_BITS - contract.LN_FRAC_BITS))
            m.d.sync += [s4.valid.eq(s3.valid), s4.last.eq(s3.last),
                         s4.a.eq(s3.gamma * n + s3.beta)]
            m.d.sync += [s5.valid.eq(s4.valid), s5.last.eq(s4.last),
                         s5.prod.eq(s4.a * self.mult)]
        self._packer(m, s5, adv)

    def _packer(self, m, s5, adv):
        """Requantised elements -> ``lanes`` per output beat."""
        V = self._config.lanes
        o = self.o
        lane = Signal(range(V))
        q = arith.requantize_product(s5.prod, self.shift, contract.ACT)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(adv & s5.valid):
            m.d.sync += [o.payload.data[lane].eq(q), lane.eq(lane + 1)]
            with m.If(lane == V - 1):
                m.d.sync += [lane.eq(0), o.valid.eq(1), o.payload.last.eq(s5.last)]


def _slot_addr(slot, idx, depth):
    """Row buffer address of element ``idx`` of slot ``slot`` (slots of ``depth`` words)."""
    return Mux(slot, depth, 0) + idx
