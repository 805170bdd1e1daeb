"""Attention mode of the run-through datapath: sub-vector-sparse ``softmax(Q K^T) V`` on the array.

For each sequence (``N`` tokens) and head, the queries are cut into row blocks of ``lanes``
consecutive tokens. A block's kept key columns come from the sub-vector mask decoder
(:class:`hw.subvector_decoder.SubvectorDecoder`, ``order="block"``: one mask beat per block).
Everything the array does is the atomic vector x broadcast-scalar product
(:attr:`hw.pe_array.Route.SHARED_VECTOR`):

* **QK^T** (raw accumulators): ``rows`` kept columns at a time, ``head_dim`` beats; beat ``k``
  shares the Q column sub-vector ``Q[block, k]`` with every row and gives row ``r`` the scalar
  ``K[j_r, k]``, so row ``r`` accumulates the score sub-vector ``S[block, j_r]``;
* **softmax** of the block's ``lanes`` rows over its kept columns, in
  :class:`hw.softmax_unit.SoftmaxUnit` (its score buffer), into a probability buffer;
* **A V** (requantised): per pass of ``rows`` output dimensions, one beat per kept column ``j``:
  the probability sub-vector ``P[block, j]`` is shared, row ``r`` takes ``V[j, pass*rows + r]``.

Schedule on the array: ``QK(0) QK(1) AV(0) QK(2) AV(1) ...``: the softmax of block ``b`` runs in
its own unit while the array computes ``QK(b+1)`` (or ``AV(b-1)``), so neither waits for the
other; a sequence's last block runs ``AV`` directly. A loader prefetches the next group's K rows
and the next block's Q rows into registers while the array works on the current one.

Q, K and V arrive on ``i`` as the QKV projection's output beats
(:func:`hw.linear_engine.activation_layout`, ``lanes`` channels of a token per beat, channels
``[q | k | v]``, each ``heads x head_dim``) into two sequence slots, so the projection of
sequence ``s + 1`` can fill one slot while attention runs on the other
(:class:`hw.run_through.RunThrough` shares one array between the two); the ``credit`` port
tells the pipeline when a slot is free (:class:`hw.pipeline.SequenceGate`).

Structure: :class:`AttentionEngine` holds the registers (:class:`hw.engine.EngineControl`) and
the datapath, which START resets as a whole (``ResetInserter``): the QKV writer, the loader, the
issuer (an ``m.FSM``: QK^T groups, A V passes), the A V read pipeline and the result router are
its parts, one method each.

Output: one beat per (head, block, dimension): ``lanes`` int8 values ``O[block*lanes + l, dim]``
(``0`` on lanes past ``N``), heads in order, blocks in order, dimensions ascending, ``last`` on a
sequence's final beat.
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, fifo, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import bits_for, log2_exact
from hw.engine import Engine, EngineRegisters, Setting
from hw.linear_engine import activation_layout
from hw.packing import pack_layout
from hw.pe_array import PEClientSignature, Route
from hw.pipeline import CreditSignature
from hw.softmax_unit import SoftmaxUnit
from hw.subvector_decoder import SubvectorDecoder, subvector_mask_layout

__all__ = ["REGISTERS", "attention_output_layout", "attention_mask_layout", "qkv_writer_position",
           "AttentionEngine"]

_MULT, _SHIFT = arith.shape_of(contract.REQ_MULT), arith.shape_of(contract.REQ_SHIFT)

#: The attention engine's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "attention",
    settings=[
        Setting("tokens", doc="tokens N of a sequence"),
        Setting("heads", doc="heads H (channels per q, k, v: H x head_dim)"),
        Setting("sequences", 16, doc="sequences in the run"),
        Setting("softmax_mult", _MULT, doc="softmax exponent multiplier"),
        Setting("softmax_shift", _SHIFT, doc="softmax exponent shift"),
        Setting("out_mult", _MULT, doc="P V requantisation multiplier"),
        Setting("out_shift", _SHIFT, doc="P V requantisation shift"),
    ],
    errors=(("mask", "malformed mask stream: beat count, column >= N (treated as pruned)"),
            ("qkv", "a QKV token of the wrong length, or a value outside int8"),
            ("overflow", "an accumulator left its format"),
            ("softmax", "the softmax unit saw a block longer than its buffer")),
    counters=(("busy", "cycles the engine gave the PE array an operand beat"),
              ("mac_lanes", "lane-cycles doing a multiply-accumulate (QK^T and A V)"),
              ("subvectors", "kept sub-vectors (work items) processed"),
              ("beats_out", "output beats")))


def attention_mask_layout(config):
    """One mask beat: a query block's kept key columns (bit ``j``), ``last`` on a head's final
    block."""
    return subvector_mask_layout(config, order="block")


def attention_output_layout(config):
    return data.StructLayout({
        "data": data.ArrayLayout(arith.shape_of(contract.ACT), config.lanes),
        "head": unsigned(bits_for(config.max_heads)),
        "block": unsigned(config.block_bits),
        "dim": unsigned(bits_for(config.head_dim)),
        "last": 1,
    })


def _tag_layout(config):
    R = config.rows
    return data.StructLayout({
        "av": 1,                                   # 0: QK^T group, 1: A V pass
        "rows": unsigned(bits_for(R + 1)),         # QK: rows holding a column
        "kept": unsigned(R),                       # QK: rows whose column is kept
        "lanes": unsigned(config.lanes),           # QK: lanes holding a query
        "block_last": 1,                           # QK: the block's last group
        "head": unsigned(bits_for(config.max_heads)),
        "block": unsigned(config.block_bits),
        "av_pass": unsigned(bits_for(-(-config.head_dim // R))),
        "seq_last": 1,                             # AV: the sequence's last block
    })


def _group_layout(config):
    """A QK^T group: up to ``rows`` kept columns of one query block."""
    return data.StructLayout({
        "rows": unsigned(bits_for(config.rows + 1)),   # rows holding a column
        "kept": unsigned(config.rows),                 # rows whose column is kept
        "lanes": unsigned(config.lanes),               # lanes holding a query
        "first": 1,                                    # the block's first group
        "last": 1,                                     # the block's last group
        "head": unsigned(bits_for(config.max_heads)),
        "block": unsigned(config.block_bits),
    })


def _block_info_layout(config):
    return data.StructLayout({
        "n": unsigned(bits_for(config.max_tokens + 1)),    # work items of the block
        "head": unsigned(bits_for(config.max_heads)),
        "block": unsigned(config.block_bits),
        "slot": 1,
        "seq_last": 1,
        "lanes": unsigned(config.lanes),
    })


def _av_beat_layout(config):
    """One A V beat in the read pipeline (S1: column list and probabilities read; S2: V row
    read)."""
    return data.StructLayout({
        "valid": 1,
        "first": 1,                         # opens the pass's accumulation
        "last": 1,                          # closes it
        "release": 1,                       # the sequence's final beat: free its QKV slot
        "olast": 1,                         # the sequence's last pass (output ``last``)
        "p": unsigned(bits_for(-(-config.head_dim // config.rows))),   # pass
        "kept": 1,                          # S2: the column is kept
        "prob": data.ArrayLayout(arith.shape_of(contract.PROB), config.lanes),   # S2
    })


def qkv_writer_position(m, config, i, ctl, n_tok, heads, slot_full):
    """The position of QKV beats (:func:`hw.linear_engine.activation_layout`, channels
    ``[q | k | v]`` of ``heads x head_dim``) written into two sequence slots: drives
    ``i.ready`` (running, the slot being written is free, fewer than ``sequences`` sequences
    in) and flags ``qkv`` errors (a value outside int8, ``last`` off the token's final beat: a
    short token closes early, a long one keeps overwriting its last chunk).

    Returns a namespace: ``slot``, ``tok``, ``part`` (0 q, 1 k, 2 v), ``head``, ``off``
    (``lanes``-chunk of the head's ``head_dim`` channels) of the current beat, ``take`` (it is
    taken) and ``seq_end`` (it closes the sequence: the caller marks ``slot_full``)."""
    V, T, H, HD = config.lanes, config.max_tokens, config.max_heads, config.head_dim
    GW = HD // V
    w = SimpleNamespace(slot=Signal(name="w_slot"), tok=Signal(range(T), name="w_tok"),
                        part=Signal(range(3), name="w_part"), head=Signal(range(H), name="w_head"),
                        off=Signal(range(GW), name="w_off"), take=Signal(name="w_take"),
                        seq_end=Signal(name="w_seq_end"))
    seqs_in = Signal(16)
    beat = i.payload
    m.d.comb += i.ready.eq(ctl.running & ~slot_full.bit_select(w.slot, 1)
                           & (seqs_in != ctl.settings.sequences))
    m.d.comb += w.take.eq(i.valid & i.ready)
    at_end = (w.off == GW - 1) & (w.head == heads - 1) & (w.part == 2)
    m.d.comb += w.seq_end.eq(w.take & beat.last & (w.tok == n_tok - 1))
    with m.If(w.take):
        m.d.comb += ctl.raise_error.qkv.eq(
            ~Cat(*[arith.fits(beat.data[l], contract.ACT) for l in range(V)]).all()
            | (beat.last != at_end))
        with m.If(beat.last):
            m.d.sync += [w.off.eq(0), w.head.eq(0), w.part.eq(0)]
            with m.If(w.seq_end):
                m.d.sync += [w.tok.eq(0), w.slot.eq(~w.slot), seqs_in.eq(seqs_in + 1)]
            with m.Else():
                m.d.sync += w.tok.eq(w.tok + 1)
        with m.Elif(~at_end):
            m.d.sync += w.off.eq(Mux(w.off == GW - 1, 0, w.off + 1))
            with m.If(w.off == GW - 1):
                m.d.sync += w.head.eq(Mux(w.head == heads - 1, 0, w.head + 1))
                with m.If(w.head == heads - 1):
                    m.d.sync += w.part.eq(w.part + 1)
    return w


class AttentionEngine(Engine):
    """Sub-vector-sparse multi-head attention, a client of the shared PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``head_dim`` (``max_d / max_heads``) must be a multiple of ``lanes``.

    Attributes
    ----------
    i : ``In(stream)`` of :func:`hw.linear_engine.activation_layout` beats: each token's
        ``3 x heads x head_dim`` channels, ``lanes`` per beat, ``last`` on its final beat.
    masks : ``In(stream)`` of :func:`attention_mask_layout` beats, per sequence, head and block.
    o : ``Out(stream)`` of :func:`attention_output_layout` beats.
    pe : ``Out(PEClientSignature)``
        Its port of the PE array.
    credit : ``Out(CreditSignature)``
        Two sequence slots: sequences released since START, tokens per sequence, START.
    csr : ``In(RegisterSignature)``
        Registers :data:`REGISTERS`.

    Errors: ``config`` (N or H zero or too large, no sequences), ``mask`` (wrong block count;
    a column ``>= N`` is treated as pruned and the outputs stay exact), ``qkv`` (a short or
    long token, a value outside int8), ``overflow``, ``softmax``.
    """

    registers = REGISTERS

    def __init__(self, config):
        if config.head_dim % config.lanes:
            raise ValueError("AttentionEngine needs head_dim ({!r}) to be a multiple of lanes "
                             "({!r})".format(config.head_dim, config.lanes))
        super().__init__(config, {
            "i": In(stream.Signature(activation_layout(config))),
            "masks": In(stream.Signature(attention_mask_layout(config))),
            "o": Out(stream.Signature(attention_output_layout(config))),
            "pe": Out(PEClientSignature(config)),
            "credit": Out(CreditSignature(config, slots=2)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        T, H = cfg.max_tokens, cfg.max_heads
        ctl = self.control(m)
        st = ctl.settings
        # Shape settings are kept whole so that a too-large value is refused, not truncated.
        m.d.comb += ctl.config_ok.eq((st.tokens != 0) & (st.tokens <= T) & (st.heads != 0)
                                     & (st.heads <= H) & (st.sequences != 0))
        # The datapath restarts as a whole on START (its state is meaningless between runs).
        dp = Module()
        m.submodules.datapath = ResetInserter(ctl.pulse.start)(dp)
        ns = SimpleNamespace(ctl=ctl, running=ctl.running)
        ns.n_tok = Signal(range(T + 1))
        ns.heads = Signal(range(H + 1))
        ns.blocks = Signal(range(cfg.max_blocks + 1))
        m.d.comb += [ns.n_tok.eq(st.tokens), ns.heads.eq(st.heads),
                     ns.blocks.eq((ns.n_tok + cfg.lanes - 1) >> log2_exact(cfg.lanes)),
                     self.credit.tokens.eq(ns.n_tok), self.credit.restart.eq(ctl.pulse.start)]
        # Clearable: its sticky error feeds the ``mask`` bit every cycle, so CLEAR_ERROR must
        # clear it too, or the bit could never be cleared after a head with too many blocks.
        dp.submodules.decoder = ns.dec = SubvectorDecoder(cfg, order="block", clearable=True)
        dp.submodules.softmax = ns.sm = SoftmaxUnit(cfg)
        m.d.comb += [ns.sm.mult.eq(st.softmax_mult), ns.sm.shift.eq(st.softmax_shift),
                     ctl.raise_error.softmax.eq(ns.sm.error)]
        m.d.comb += [ns.dec.clear_error.eq(ctl.pulse.clear_error),
                     ns.dec.i.valid.eq(self.masks.valid & ctl.running),
                     ns.dec.i.payload.eq(self.masks.payload),
                     self.masks.ready.eq(ns.dec.i.ready & ctl.running)]
        self._qkv_writer(dp, ns)
        self._loader(dp, ns)
        self._issuer(dp, ns)
        self._av_reads(dp, ns)
        self._beats(dp, ns)
        self._results(dp, ns)
        return m

    def _buf_addr(self, slot, tok, head):
        T, H = self._config.max_tokens, self._config.max_heads
        return (slot * T + tok) * H + head

    def _qkv_writer(self, m, ns):
        """QKV beats into three buffers (q, k, v) of two sequence slots of (token, head)
        words; a slot is full once its sequence's last token is in."""
        cfg = self._config
        V, T, H, HD = cfg.lanes, cfg.max_tokens, cfg.max_heads, cfg.head_dim
        ns.word = data.ArrayLayout(arith.shape_of(contract.ACT), HD)
        ns.mems = [Memory(shape=ns.word, depth=2 * T * H, init=[]) for _ in range(3)]
        for name, mem in zip("qkv", ns.mems):
            m.submodules[f"{name}_buf"] = mem
        ns.slot_full = Signal(2)
        ns.slot_new = Signal(2)             # full, and not yet taken by the loader
        beat = self.i.payload
        w = qkv_writer_position(m, cfg, self.i, ns.ctl, ns.n_tok, ns.heads, ns.slot_full)
        for idx, mem in enumerate(ns.mems):
            wp = mem.write_port(granularity=V)
            m.d.comb += [wp.addr.eq(self._buf_addr(w.slot, w.tok, w.head)),
                         wp.data.eq(Cat(*[beat.data[e % V][:contract.ACT.bits]
                                          for e in range(HD)])),
                         wp.en.eq(Mux(w.take & (w.part == idx), 1 << w.off, 0))]
        with m.If(w.seq_end):
            m.d.sync += [ns.slot_full.bit_select(w.slot, 1).eq(1),
                         ns.slot_new.bit_select(w.slot, 1).eq(1)]

    def _loader(self, m, ns):
        """Per query block of a full slot: its ``lanes`` Q rows into registers, then its kept
        columns from the mask decoder into the block's column list, ``rows`` at a time as a
        QK^T group (descriptor and K rows in registers), for the issuer."""
        cfg = self._config
        V, R, T, H, NB = cfg.lanes, cfg.rows, cfg.max_tokens, cfg.max_heads, cfg.max_blocks
        cl_layout = data.StructLayout({"col": unsigned(cfg.column_bits), "kept": 1})
        m.submodules.col_list = ns.cl_mem = Memory(shape=cl_layout, depth=4 * T, init=[])
        ns.info_layout = _block_info_layout(cfg)
        ns.info = [Signal(ns.info_layout, name=f"info_{s}") for s in range(4)]
        ns.q_next = [Signal(ns.word, name=f"q_next_{l}") for l in range(V)]
        ns.k_next = [Signal(ns.word, name=f"k_next_{r}") for r in range(R)]
        ns.nx = nx = Signal(_group_layout(cfg))     # the loaded group, waiting for the issuer
        ns.nx_valid, pend = Signal(), Signal()
        l_slot = Signal()
        l_head = Signal(range(H))
        l_block = Signal(range(NB))
        l_bslot = Signal(2)                 # column-list slot of the block being loaded
        l_items = Signal(range(T + 1))
        l_first = Signal(init=1)
        g_count = Signal(range(R + 1))
        g_kept = Signal(R)
        ql = Signal(range(V + 1))
        ql_d = Signal(range(V))
        ql_ok_d, ql_valid_d = Signal(), Signal()
        kd_idx = Signal(range(R))
        kd_valid = Signal()
        lanes = Signal(V)
        m.d.comb += lanes.eq(Cat(*[(l_block * V + l) < ns.n_tok for l in range(V)]))
        q_rp = ns.mems[0].read_port()
        k_rp = ns.mems[1].read_port()
        cl_wp = ns.cl_mem.write_port()
        dec = ns.dec
        item = dec.o.payload
        loader_free = ~ns.nx_valid & ~pend
        take_item = dec.o.valid & dec.o.ready
        bad_col = ~item.empty & (item.column >= ns.n_tok)
        item_kept = ~item.empty & ~bad_col
        bad_item = Signal()
        m.d.comb += ns.ctl.raise_error.mask.eq(dec.error | bad_item)

        with m.FSM(name="loader") as fsm:
            with m.State("WAIT"):
                # A slot still full with the sequence before last (its A V not done) is not
                # this sequence's: wait for the writer to refill it.
                with m.If(ns.running & ns.slot_new.bit_select(l_slot, 1)):
                    m.d.sync += [ql.eq(0), ns.slot_new.bit_select(l_slot, 1).eq(0)]
                    m.next = "Q_LOAD"
            with m.State("Q_LOAD"):
                with m.If(loader_free):
                    tok = l_block * V + ql
                    m.d.comb += [q_rp.addr.eq(self._buf_addr(l_slot, tok, l_head)),
                                 q_rp.en.eq(1)]
                    m.d.sync += [ql.eq(ql + 1), ql_d.eq(ql), ql_ok_d.eq(tok < ns.n_tok),
                                 ql_valid_d.eq(1)]
                    with m.If(ql == V - 1):
                        m.next = "ITEMS"
            with m.State("ITEMS"):
                m.d.comb += dec.o.ready.eq(loader_free)
                with m.If(take_item & item.col_last):
                    m.d.sync += ql.eq(0)
                    m.next = "Q_LOAD"
                    with m.If((l_block == ns.blocks - 1) & (l_head == ns.heads - 1)):
                        m.next = "WAIT"
        with m.If(~(loader_free & fsm.ongoing("Q_LOAD"))):
            m.d.sync += ql_valid_d.eq(0)
        with m.If(ql_valid_d):
            for l in range(V):
                with m.If(ql_d == l):
                    m.d.sync += ns.q_next[l].eq(Mux(ql_ok_d, q_rp.data, 0))

        m.d.comb += [k_rp.addr.eq(self._buf_addr(l_slot, item.column, l_head)),
                     k_rp.en.eq(take_item),
                     cl_wp.addr.eq(l_bslot * T + l_items), cl_wp.data.col.eq(item.column),
                     cl_wp.data.kept.eq(item_kept), cl_wp.en.eq(take_item)]
        m.d.sync += [kd_valid.eq(take_item), kd_idx.eq(g_count)]
        with m.If(kd_valid):
            for r in range(R):
                with m.If(kd_idx == r):
                    m.d.sync += ns.k_next[r].eq(k_rp.data)
        with m.If(pend):
            m.d.sync += [pend.eq(0), ns.nx_valid.eq(1)]
        with m.If(take_item):
            kept_now = g_kept | (item_kept << g_count)[:R]
            seq_last = (l_head == ns.heads - 1) & (l_block == ns.blocks - 1)
            m.d.comb += [bad_item.eq(bad_col | (item.block != l_block)
                                     | (item.col_last & (item.last != (l_block == ns.blocks - 1)))),
                         ns.ctl.count.subvectors.eq(item_kept)]
            m.d.sync += [l_items.eq(l_items + 1), g_count.eq(g_count + 1), g_kept.eq(kept_now)]
            with m.If(item.col_last | (g_count == R - 1)):
                m.d.sync += [pend.eq(1), nx.rows.eq(g_count + 1), nx.kept.eq(kept_now),
                             nx.first.eq(l_first), nx.last.eq(item.col_last), nx.lanes.eq(lanes),
                             nx.head.eq(l_head), nx.block.eq(l_block), l_first.eq(item.col_last),
                             g_count.eq(0), g_kept.eq(0)]
            with m.If(item.col_last):
                block_info = pack_layout(m, ns.info_layout, {
                    "n": l_items + 1, "head": l_head, "block": l_block, "slot": l_slot,
                    "seq_last": seq_last, "lanes": lanes}, name="info_in")
                for s in range(4):
                    with m.If(l_bslot == s):
                        m.d.sync += ns.info[s].eq(block_info)
                m.d.sync += [l_bslot.eq(l_bslot + 1), l_items.eq(0)]
                with m.If(l_block == ns.blocks - 1):
                    m.d.sync += l_block.eq(0)
                    with m.If(l_head == ns.heads - 1):
                        m.d.sync += [l_head.eq(0), l_slot.eq(~l_slot)]
                    with m.Else():
                        m.d.sync += l_head.eq(l_head + 1)
                with m.Else():
                    m.d.sync += l_block.eq(l_block + 1)

    def _issuer(self, m, ns):
        """The array's schedule, an ``m.FSM``: in QK, issue the loaded groups of a block from
        registers (``head_dim`` beats each, Q and K rows rotating by one element a beat); in AV,
        run one block's A V passes through the read pipeline. A V goes first when two blocks'
        QK^T are done (or the sequence's last one), so the softmax of one block overlaps the
        next block's QK^T."""
        cfg = self._config
        V, R, HD = cfg.lanes, cfg.rows, cfg.head_dim
        passes = -(-HD // R)
        req = self.pe.req
        ns.tags = tags = fifo.SyncFIFO(width=_tag_layout(cfg).size, depth=4)
        m.submodules.tags = tags
        qk_done = Signal(16)                # blocks whose QK^T has been issued
        ns.av_done = av_done = Signal(16)   # blocks whose A V has been issued (S0)
        pending = Signal(2)
        m.d.comb += pending.eq(qk_done - av_done)
        oldest = Signal(ns.info_layout)
        m.d.comb += oldest.eq(Array([i.as_value() for i in ns.info])[av_done[:2]])
        ns.pfull = Signal(2)                # probability slot holds a finished block
        # QK^T: current group registers, rotated by one element per beat.
        ns.q_cur = [Signal(ns.word, name=f"q_cur_{l}") for l in range(V)]
        ns.k_cur = [Signal(ns.word, name=f"k_cur_{r}") for r in range(R)]
        qk_busy = Signal()
        ns.cur = cur = Signal(_group_layout(cfg))   # the group being issued
        ns.qk_k = qk_k = Signal(range(HD))
        # A V: S0 address generation.
        ns.s0_active = Signal()
        ns.av_i = Signal(range(cfg.max_tokens))
        ns.av_p = Signal(range(passes))
        ns.av_info = Signal(ns.info_layout)
        ns.av_cslot = Signal(2)
        ns.av_pslot = Signal()
        ns.s1 = Signal(_av_beat_layout(cfg))
        ns.s2 = Signal(_av_beat_layout(cfg))
        ns.adv = Signal()
        # With a beat in S2, req.valid is its own (a closing one waits for room for its tag).
        m.d.comb += ns.adv.eq(~ns.s2.valid | (req.valid & req.ready))
        ns.qk_valid = Signal()
        qk_beat_last = qk_k == HD - 1
        ns.qk_fire = Signal()
        m.d.comb += ns.qk_fire.eq(ns.qk_valid & req.ready & (~qk_beat_last | tags.w_rdy))
        qk_end = ns.qk_fire & qk_beat_last
        take_group = Signal()

        with m.FSM(name="issuer") as fsm:
            with m.State("IDLE"):
                want_av = (pending == 2) | ((pending == 1) & oldest.seq_last)
                # The read pipeline must be empty: its stages use the block descriptor.
                with m.If(ns.running & want_av & ns.pfull.bit_select(av_done[0], 1)
                          & ~ns.s1.valid & ~ns.s2.valid):
                    m.d.sync += [ns.s0_active.eq(1), ns.av_i.eq(0), ns.av_p.eq(0),
                                 ns.av_info.eq(oldest), ns.av_cslot.eq(av_done[:2]),
                                 ns.av_pslot.eq(av_done[0])]
                    m.next = "AV"
                with m.Elif(ns.running & ~want_av & ns.nx_valid):
                    m.next = "QK"
            with m.State("QK"):
                with m.If(ns.qk_fire):
                    m.d.sync += qk_k.eq(Mux(qk_beat_last, 0, qk_k + 1))
                    for sig in ns.q_cur + ns.k_cur:
                        m.d.sync += sig.eq(Cat(sig.as_value()[contract.ACT.bits:],
                                               sig.as_value()[:contract.ACT.bits]))
                with m.If(qk_end):
                    m.d.sync += qk_busy.eq(0)
                    with m.If(cur.last):
                        m.d.sync += qk_done.eq(qk_done + 1)
                        m.next = "IDLE"
                with m.If(take_group):
                    m.d.sync += [qk_busy.eq(1), ns.nx_valid.eq(0), cur.eq(ns.nx)]
                    m.d.sync += [ns.k_cur[r].eq(ns.k_next[r]) for r in range(R)]
                    with m.If(ns.nx.first):
                        m.d.sync += [ns.q_cur[l].eq(ns.q_next[l]) for l in range(V)]
            with m.State("AV"):
                with m.If(ns.adv & ns.s0_active):
                    with m.If(ns.av_i == ns.av_info.n - 1):
                        m.d.sync += [ns.av_i.eq(0), ns.av_p.eq(ns.av_p + 1)]
                        with m.If(ns.av_p == passes - 1):
                            m.d.sync += [ns.s0_active.eq(0), av_done.eq(av_done + 1),
                                         ns.pfull.bit_select(ns.av_pslot, 1).eq(0)]
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += ns.av_i.eq(ns.av_i + 1)
        m.d.comb += [
            ns.qk_valid.eq(fsm.ongoing("QK") & qk_busy & ~ns.s1.valid & ~ns.s2.valid),
            take_group.eq(fsm.ongoing("QK") & ns.nx_valid & (~qk_busy | (qk_end & ~cur.last)))]
        ns.s0_valid = fsm.ongoing("AV") & ns.s0_active

    def _av_reads(self, m, ns):
        """The A V read pipeline: S0 (work item ``av_i`` of pass ``av_p``) reads the column
        list and the probabilities -> S1 reads the column's V row -> S2 is the PE beat. The
        sequence's final beat frees its QKV slot."""
        cfg = self._config
        T = cfg.max_tokens
        passes = -(-cfg.head_dim // cfg.rows)
        s1, s2, adv, info = ns.s1, ns.s2, ns.adv, ns.av_info
        ns.cl_rp = cl_rp = ns.cl_mem.read_port(transparent_for=())
        m.submodules.prob_buf = ns.p_mem = Memory(
            shape=data.ArrayLayout(arith.shape_of(contract.PROB), cfg.lanes), depth=2 * T,
            init=[])
        p_rp = ns.p_mem.read_port(transparent_for=())
        ns.v_rp = v_rp = ns.mems[2].read_port()
        s0_final = (ns.av_i == info.n - 1) & (ns.av_p == passes - 1)
        m.d.comb += [cl_rp.addr.eq(ns.av_cslot * T + ns.av_i), cl_rp.en.eq(adv),
                     p_rp.addr.eq(ns.av_pslot * T + ns.av_i), p_rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s1.valid.eq(ns.s0_valid), s1.first.eq(ns.av_i == 0),
                         s1.last.eq(ns.av_i == info.n - 1), s1.p.eq(ns.av_p),
                         s1.release.eq(s0_final & info.seq_last),
                         s1.olast.eq(info.seq_last & (ns.av_p == passes - 1))]
        m.d.comb += [v_rp.addr.eq(self._buf_addr(info.slot, cl_rp.data.col, info.head)),
                     v_rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s2.eq(s1), s2.kept.eq(cl_rp.data.kept), s2.prob.eq(p_rp.data)]
        ns.av_fire = s2.valid & adv
        with m.If(ns.av_fire & s2.release):
            for s in range(2):
                with m.If(info.slot == s):
                    m.d.sync += ns.slot_full[s].eq(0)
            m.d.sync += self.credit.released.eq(self.credit.released + 1)

    def _beats(self, m, ns):
        """The PE beats of both sources (A V from S2 first, else QK^T from the group
        registers), each packed as one value (:mod:`hw.packing`), and their tags."""
        cfg = self._config
        V, R, HD = cfg.lanes, cfg.rows, cfg.head_dim
        passes = -(-HD // R)
        req, s2, info, cur = self.pe.req, ns.s2, ns.av_info, ns.cur
        pe_layout = req.payload.shape()
        v_row = ns.v_rp.data
        av_scalars = []
        for r in range(R):
            options = [v_row[min(p * R + r, HD - 1)] for p in range(passes)]
            av_scalars.append(Array(options)[s2.p] if passes > 1 else options[0])
        st = ns.ctl.settings
        av_payload = pack_layout(m, pe_layout, {
            "route": Route.SHARED_VECTOR, "clear": s2.first, "last": s2.last, "bypass": 0,
            "mult": st.out_mult, "shift": st.out_shift, "scalar": av_scalars,
            "vector": [[s2.prob[l] for l in range(V)]],
            "mask": [Mux(s2.kept & (s2.p * R + r < HD), info.lanes, 0) for r in range(R)],
        }, name="av_beat")
        qk_payload = pack_layout(m, pe_layout, {
            "route": Route.SHARED_VECTOR, "clear": ns.qk_k == 0, "last": ns.qk_k == HD - 1,
            "bypass": 1, "scalar": [ns.k_cur[r][0] for r in range(R)],
            "vector": [[ns.q_cur[l][0] for l in range(V)]],
            "mask": [Mux(cur.kept[r], cur.lanes, 0) for r in range(R)],
        }, name="qk_beat")
        # A closing beat waits for room for its tag (offered without it, the array took it
        # twice once results came back more slowly: the PE array's pipelined output).
        m.d.comb += [req.valid.eq(Mux(s2.valid, ~s2.last | ns.tags.w_rdy,
                                      ns.qk_valid & ((ns.qk_k != HD - 1) | ns.tags.w_rdy))),
                     req.payload.eq(Mux(s2.valid, av_payload, qk_payload))]
        beat_ok = Mux(s2.valid, ns.av_fire, ns.qk_fire)
        m.d.comb += [ns.tags.w_data.eq(pack_layout(m, _tag_layout(cfg), {
            "av": s2.valid, "rows": cur.rows, "kept": cur.kept, "lanes": cur.lanes,
            "block_last": cur.last, "head": Mux(s2.valid, info.head, cur.head),
            "block": Mux(s2.valid, info.block, cur.block), "av_pass": s2.p,
            "seq_last": s2.olast}, name="tag_in")),
            ns.tags.w_en.eq(beat_ok & req.payload.last)]
        m.d.comb += [ns.ctl.count.busy.eq(beat_ok),
                     ns.ctl.count.mac_lanes.eq(
                         Mux(beat_ok, arith.popcount(req.payload.mask.as_value()), 0))]

    def _results(self, m, ns):
        """Result rows by their tag: QK^T rows -> softmax -> probability buffer (two block
        slots); A V rows -> ``o``. The run is finished when every sequence's last beat left."""
        cfg = self._config
        V, R, HD, T = cfg.lanes, cfg.rows, cfg.head_dim, cfg.max_tokens
        passes = -(-HD // R)
        res, sm, tags = self.pe.res, ns.sm, ns.tags
        tag = data.View(_tag_layout(cfg), tags.r_data)
        row = res.payload
        to_softmax = tags.r_rdy & ~tag.av & (row.row < tag.rows)
        dim = Signal(range(passes * R + 1))
        m.d.comb += dim.eq(tag.av_pass * R + row.row)
        to_out = tags.r_rdy & tag.av & (dim < HD)
        m.d.comb += [
            sm.i.valid.eq(res.valid & to_softmax),
            sm.i.payload.score.eq(row.data),
            sm.i.payload.kept.eq(Mux(tag.kept.bit_select(row.row, 1), tag.lanes, 0)),
            sm.i.payload.last.eq(tag.block_last & (row.row == tag.rows - 1)),
            self.o.valid.eq(res.valid & to_out),
            self.o.payload.head.eq(tag.head), self.o.payload.block.eq(tag.block),
            self.o.payload.dim.eq(dim),
            self.o.payload.last.eq(tag.seq_last & (dim == HD - 1)),
            res.ready.eq(tags.r_rdy & Mux(to_softmax, sm.i.ready,
                                          Mux(to_out, self.o.ready, 1))),
            tags.r_en.eq(res.valid & res.ready & row.last),
        ]
        m.d.comb += [self.o.payload.data[l].eq(row.data[l][:contract.ACT.bits])
                     for l in range(V)]
        m.d.comb += ns.ctl.raise_error.overflow.eq(
            res.valid & res.ready & row.overflow & (to_softmax | to_out))

        pw_slot = Signal()
        pw_idx = Signal(range(T))
        p_wp = ns.p_mem.write_port()
        m.d.comb += [sm.o.ready.eq(~ns.pfull.bit_select(pw_slot, 1)),
                     p_wp.addr.eq(pw_slot * T + pw_idx), p_wp.data.eq(sm.o.payload.prob),
                     p_wp.en.eq(sm.o.valid & sm.o.ready)]
        with m.If(sm.o.valid & sm.o.ready):
            with m.If(sm.o.payload.last):
                m.d.sync += [pw_idx.eq(0), pw_slot.eq(~pw_slot),
                             ns.pfull.bit_select(pw_slot, 1).eq(1)]
            with m.Else():
                m.d.sync += pw_idx.eq(pw_idx + 1)

        seqs_out = Signal(16)
        o_fire = self.o.valid & self.o.ready
        m.d.comb += ns.ctl.count.beats_out.eq(o_fire)
        with m.If(o_fire & self.o.payload.last):
            m.d.sync += seqs_out.eq(seqs_out + 1)
        m.d.comb += ns.ctl.finished.eq(seqs_out == ns.ctl.settings.sequences)
