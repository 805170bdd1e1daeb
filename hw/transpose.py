"""Transposing buffer: attention output (per head, block and dimension) into token beats.

The attention engine (:class:`hw.attention_engine.AttentionEngine`) emits a sequence of ``N``
tokens as one beat per (head, block, dimension): ``lanes`` values ``O[block*lanes + l, dim]``
(:func:`hw.attention_engine.attention_output_layout`), heads in order, blocks in order,
dimensions ascending, ``last`` on the sequence's final beat. The output projection wants tokens
(:func:`hw.linear_engine.activation_layout`): for each token ``t = 0 .. N-1``, ``heads *
head_dim / lanes`` beats, beat ``b`` holding channels ``b*lanes .. b*lanes + lanes - 1`` (channel
``c = head * head_dim + dim``, sign-extended from int8), ``last`` on the token's final beat.

A token is complete only after the last head, so a whole sequence is buffered. There are two
sequence slots: the input fills slot ``s + 1`` while slot ``s`` drains.

**Memory organisation** (a ``lanes x lanes`` corner turn). An input beat is ``lanes`` tokens of
one channel, an output beat ``lanes`` channels of one token. Entry ``(slot, t, c)`` lives in bank
``(t + c) mod lanes`` (of ``lanes`` banks) at address ``(slot * max_tokens + t) * CB + c //
lanes``, ``CB = ceil(max_d / lanes)``. The ``lanes`` tokens ``t = block*lanes + l`` of a write
differ mod ``lanes``, as do the channels ``b*lanes + j`` of a read, so both touch each bank
exactly once: one write port and one read port per bank, the input data rotated by ``c mod
lanes`` into the banks, the read data rotated back by ``t mod lanes``. Lanes past ``N`` are not
written.

Cost: ``lanes`` banks of ``2 * max_tokens * CB`` int8 words, ``2 * max_tokens * max_d * 8`` bits
when ``lanes`` divides ``max_d``; besides, only the output register (``lanes x 16`` bits),
one pipeline stage and the counters. ``default`` (8 lanes, 512 tokens, ``max_d`` 192): 8 banks
of 24576 x 8 = 1.5 Mibit, 12 18-Kbit blocks (2048 x 9) per bank, 96 in all (ECP5-85F: 208);
``vidt`` (``max_d`` 64): 8 x 8192 x 8 = 512 Kibit, 32 blocks; ``tiny`` (128 tokens, ``max_d``
64): 8 x 2048 x 8 = 128 Kibit, 32 iCE40 EBRs (512 x 8), more than the UP5K's 30.

**Protocol.** Registers :data:`REGISTERS`: ``tokens`` (``N``), ``heads``, ``sequences``; START
(with ``1 <= N <= max_tokens``, ``1 <= heads <= max_heads``, ``sequences >= 1`` and ``heads *
head_dim`` a multiple of ``lanes``, else the ``config`` error) resets the datapath and begins a
run; DONE once the last output beat of sequence ``sequences - 1`` was taken. Input beats are
taken only while running, and not once ``sequences`` sequences were taken (except surplus beats
being dropped, below). Counter ``tokens_out``: tokens emitted (beats with ``last`` taken).

**Errors** (``frame``, sticky). The write position comes from the unit's own counters; the
beat's ``head``, ``block`` and ``dim`` fields are only checked. A beat whose fields disagree
with the expected position, or whose ``last`` is not where ``N`` and ``heads`` put it, sets
``frame``; the unit resynchronises on the input's ``last``:

* fields wrong, ``last`` in place: the beat is written at the expected position;
* ``last`` early: the sequence closes at that beat (entries it did not write keep old data) and
  the next beat begins a new sequence;
* ``last`` missing on the expected final beat: the sequence closes there by count, and the
  surplus beats are consumed and dropped up to and including the next one with ``last``.

Every sequence the input closes still leaves as ``N`` tokens, so a run always ends (with DONE);
sequences before and after a malformed one come out exact, as does the malformed one in the
``last``-missing case.

**Throughput**: one input beat and one output beat per cycle, both at once (in different
slots). A sequence takes ``heads * ceil(N / lanes) * head_dim`` input cycles and ``N * heads *
head_dim / lanes`` output cycles. Input waits only while its slot has not yet drained.
**Latency**: with the output side idle and ``o.ready`` high, ``o.valid`` with the sequence's
first token beat rises three cycles after the cycle whose edge takes the sequence's last input
beat. Back-pressure: the read ports' ``en`` is the output register's advance, so a stalled
beat is held, never lost or repeated.
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, ResetInserter, Signal
from amaranth.lib import stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import log2_exact
from hw.attention_engine import attention_output_layout
from hw.engine import Engine, EngineRegisters, Setting
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "Transpose"]

#: The transposing buffer's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "transpose",
    settings=[
        Setting("tokens", doc="tokens N of a sequence"),
        Setting("heads", doc="heads H (channels per token: H x head_dim)"),
        Setting("sequences", 16, doc="sequences in the run (DONE when all were emitted)"),
    ],
    errors=(("frame", "an input last in the wrong place, or head/block/dim fields out of "
                      "order (the beat is written at its expected place)"),),
    counters=(("tokens_out", "tokens emitted"),))


class Transpose(Engine):
    """The transposing buffer between the attention engine and the output projection.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``lanes``, ``max_tokens``, ``max_heads``, ``max_d`` (``head_dim``).

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.attention_engine.attention_output_layout` beats.
    o : ``Out(stream)`` of :func:`hw.linear_engine.activation_layout` beats, per token.
    csr : ``In(RegisterSignature)``
        Registers :data:`REGISTERS`.

    Errors: ``config``, ``frame`` (see the module docstring).
    """

    registers = REGISTERS

    def __init__(self, config):
        super().__init__(config, {
            "i": In(stream.Signature(attention_output_layout(config))),
            "o": Out(stream.Signature(activation_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, T, H, HD = cfg.lanes, cfg.max_tokens, cfg.max_heads, cfg.head_dim
        ctl = self.control(m)
        st = ctl.settings
        ns = SimpleNamespace(ctl=ctl, lv=log2_exact(V), cb=-(-cfg.max_d // V))
        ns.n_tok = Signal(range(T + 1))
        ns.heads = Signal(range(H + 1))
        ns.blocks = Signal(range(cfg.max_blocks + 1))
        ns.beats = Signal(range(ns.cb + 1))           # output beats per token
        channels = Signal(range(H * HD + 1))
        m.d.comb += [ns.n_tok.eq(st.tokens), ns.heads.eq(st.heads),
                     ns.blocks.eq((ns.n_tok + V - 1) >> ns.lv),
                     channels.eq(ns.heads * HD), ns.beats.eq(channels >> ns.lv)]
        # Shape settings are kept whole so that a too-large value is refused, not truncated.
        aligned = (channels & (V - 1)) == 0
        m.d.comb += ctl.config_ok.eq((st.tokens != 0) & (st.tokens <= T) & (st.heads != 0)
                                     & (st.heads <= H) & (st.sequences != 0) & aligned)
        # The datapath restarts as a whole on START (memory contents excepted).
        dp = Module()
        m.submodules.datapath = ResetInserter(ctl.pulse.start)(dp)
        ns.mems = [Memory(shape=arith.shape_of(contract.ACT), depth=2 * T * ns.cb, init=[])
                   for _ in range(V)]
        for k, mem in enumerate(ns.mems):
            dp.submodules[f"bank_{k}"] = mem
        ns.full = [Signal(name=f"slot_full_{s}") for s in range(2)]
        self._writer(dp, ns)
        self._reader(dp, ns)
        return m

    def _addr(self, ns, slot, token, cbeat):
        return (slot * self._config.max_tokens + token) * ns.cb + cbeat

    def _writer(self, m, ns):
        """Input beats into the banks of slot ``w_slot`` at the counters' position; ``frame``
        checks; a slot is full once its sequence closed."""
        cfg = self._config
        V, H, HD = cfg.lanes, cfg.max_heads, cfg.head_dim
        ctl = ns.ctl
        w_slot = Signal()
        w_head = Signal(range(H))
        w_blk = Signal(range(cfg.max_blocks))
        w_dim = Signal(range(HD))
        w_hbase = Signal(range(H * HD))               # w_head * head_dim
        dropping = Signal()                           # surplus beats after a missing last
        seqs_in = Signal.like(ctl.settings.sequences)
        beat = self.i.payload
        slot_full = Array(ns.full)[w_slot]
        m.d.comb += self.i.ready.eq(ctl.running & (dropping | ~slot_full
                                                   & (seqs_in != ctl.settings.sequences)))
        take = self.i.valid & self.i.ready
        write = take & ~dropping

        chan = Signal(range(H * HD))
        m.d.comb += chan.eq(w_hbase + w_dim)
        lanes = Array(beat.data[l] for l in range(V))
        for k, mem in enumerate(ns.mems):
            wp = mem.write_port()
            lane = Signal(range(V), name=f"w_lane_{k}")   # the input lane bank k takes
            token = Signal(range(cfg.max_blocks * V), name=f"w_token_{k}")
            m.d.comb += [lane.eq((k - chan)[:ns.lv]), token.eq(Cat(lane, w_blk)),
                         wp.addr.eq(self._addr(ns, w_slot, token, chan >> ns.lv)),
                         wp.data.eq(lanes[lane]),
                         wp.en.eq(write & (token < ns.n_tok))]

        head_end = (w_dim == HD - 1) & (w_blk == ns.blocks - 1)
        exp_last = head_end & (w_head == ns.heads - 1)
        misplaced = ((beat.head != w_head) | (beat.block != w_blk) | (beat.dim != w_dim)
                     | (beat.last != exp_last))
        m.d.comb += ctl.raise_error.frame.eq(write & misplaced)
        with m.If(take & dropping & beat.last):
            m.d.sync += dropping.eq(0)
        with m.If(write):
            with m.If(beat.last | exp_last):
                m.d.sync += [w_dim.eq(0), w_blk.eq(0), w_head.eq(0), w_hbase.eq(0),
                             w_slot.eq(~w_slot), seqs_in.eq(seqs_in + 1),
                             dropping.eq(~beat.last)]
                for s in range(2):
                    with m.If(w_slot == s):
                        m.d.sync += ns.full[s].eq(1)
            with m.Elif(head_end):
                m.d.sync += [w_dim.eq(0), w_blk.eq(0), w_head.eq(w_head + 1),
                             w_hbase.eq(w_hbase + HD)]
            with m.Elif(w_dim == HD - 1):
                m.d.sync += [w_dim.eq(0), w_blk.eq(w_blk + 1)]
            with m.Else():
                m.d.sync += w_dim.eq(w_dim + 1)

    def _reader(self, m, ns):
        """Token beats out of full slots: address issue (S0), bank data (S1), rotated into the
        output register. The pipeline and the read ports move only when the output register
        can take a beat."""
        cfg = self._config
        V, T = cfg.lanes, cfg.max_tokens
        ctl = ns.ctl
        r_slot = Signal()
        r_tok = Signal(range(T))
        r_beat = Signal(range(ns.cb))
        seqs_out = Signal.like(ctl.settings.sequences)
        move = ~self.o.valid | self.o.ready
        issue = move & Array(ns.full)[r_slot]
        tok_end = r_beat == ns.beats - 1
        seq_end = tok_end & (r_tok == ns.n_tok - 1)

        # S1: the banks' data, with what the output register needs of it.
        a_valid, a_last, a_seq_last = Signal(), Signal(), Signal()
        a_rot = Signal(range(V))
        o_seq_last = Signal()
        ports = [mem.read_port() for mem in ns.mems]
        for rp in ports:
            m.d.comb += [rp.addr.eq(self._addr(ns, r_slot, r_tok, r_beat)), rp.en.eq(move)]
        bank = Array(rp.data for rp in ports)
        with m.If(move):
            m.d.sync += [a_valid.eq(issue), a_last.eq(tok_end), a_seq_last.eq(seq_end),
                         a_rot.eq(r_tok[:ns.lv]),
                         self.o.valid.eq(a_valid), self.o.payload.last.eq(a_last),
                         o_seq_last.eq(a_seq_last)]
            # Lane j of the beat is channel b*lanes + j, in bank (t + j) mod lanes.
            for j in range(V):
                m.d.sync += self.o.payload.data[j].eq(bank[(a_rot + j)[:ns.lv]])

        with m.If(issue):
            with m.If(seq_end):
                m.d.sync += [r_beat.eq(0), r_tok.eq(0), r_slot.eq(~r_slot)]
                # The slot is free once its last read is issued: that read's data is latched
                # at this edge, before any write to the slot.
                for s in range(2):
                    with m.If(r_slot == s):
                        m.d.sync += ns.full[s].eq(0)
            with m.Elif(tok_end):
                m.d.sync += [r_beat.eq(0), r_tok.eq(r_tok + 1)]
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)

        fire = self.o.valid & self.o.ready
        with m.If(fire & o_seq_last):
            m.d.sync += seqs_out.eq(seqs_out + 1)
        m.d.comb += [ctl.count.tokens_out.eq(fire & self.o.payload.last),
                     ctl.finished.eq(seqs_out == ctl.settings.sequences)]
