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

Q, K and V arrive as the QKV projection's output beats
(:func:`hw.linear_engine.linear_output_layout`, ``lanes`` channels of a token per beat, channels
``[q | k | v]``, each ``heads x head_dim``) into two sequence slots, so the projection of
sequence ``s + 1`` can fill one slot while attention runs on the other
(:class:`hw.run_through.RunThrough` shares one array between the two).

Output: one beat per (head, block, dimension): ``lanes`` int8 values ``O[block*lanes + l, dim]``
(``0`` on lanes past ``N``), heads in order, blocks in order, dimensions ascending, ``last`` on a
sequence's final beat.
"""

import enum as py_enum

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.linear_engine import linear_output_layout
from hw.packing import pack_layout
from hw.pe_array import Route, pe_ports, use_pe
from hw.registers import register_port, register_reads
from hw.softmax_unit import SoftmaxUnit
from hw.subvector_decoder import SubvectorDecoder, subvector_mask_layout

__all__ = ["Reg", "REGISTERS", "Ctrl", "Status", "attention_output_layout",
           "attention_mask_layout", "AttentionEngine"]


class Reg(py_enum.IntEnum):
    """Register addresses (32-bit registers)."""
    CTRL = 0           # W: Ctrl pulses
    STATUS = 1         # R: Status bits
    TOKENS = 2         # RW: tokens N of a sequence
    HEADS = 3          # RW: heads H (channels per q, k, v: H x head_dim)
    SEQUENCES = 4      # RW: sequences in the run
    SOFTMAX_MULT = 5   # RW: softmax exponent multiplier
    SOFTMAX_SHIFT = 6  # RW: softmax exponent shift
    OUT_MULT = 7       # RW: P V requantisation multiplier
    OUT_SHIFT = 8      # RW: P V requantisation shift
    CYCLES = 9         # R: cycles from start to done
    BUSY = 10          # R: cycles the engine gave the PE array an operand beat
    MAC_LANES = 11     # R: lane-cycles doing a multiply-accumulate (QK^T and A V)
    SUBVECTORS = 12    # R: kept sub-vectors (work items) processed
    BEATS_OUT = 13     # R: output beats


REGISTERS = {r.name: int(r) for r in Reg}


class Ctrl(py_enum.IntFlag):
    START = 1
    CLEAR_ERROR = 4


class Status(py_enum.IntFlag):
    RUNNING = 1
    DONE = 2
    ERROR = 4
    ERR_CONFIG = 1 << 8     # shape registers out of range (the run does not start)
    ERR_MASK = 1 << 9       # malformed mask stream: beat count, column >= N (treated as pruned)
    ERR_QKV = 1 << 10       # a QKV token of the wrong length, or a value outside int8
    ERR_OVERFLOW = 1 << 11  # an accumulator left its format
    ERR_SOFTMAX = 1 << 12   # the softmax unit saw a block longer than its buffer


def _bits(n):
    return max(1, contract.ceil_log2(n))


def _popcount(value):
    """Set bits of ``value``, as a balanced adder tree (a chain of hundreds of adders is slow
    to build and to simulate)."""
    terms = [value[i] for i in range(len(value))]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def attention_mask_layout(config):
    """One mask beat: a query block's kept key columns (bit ``j``), ``last`` on a head's final
    block."""
    return subvector_mask_layout(config, order="block")


def attention_output_layout(config):
    return data.StructLayout({
        "data": data.ArrayLayout(arith.shape_of(contract.ACT), config.lanes),
        "head": unsigned(_bits(config.max_heads)),
        "block": unsigned(config.block_bits),
        "dim": unsigned(_bits(config.head_dim)),
        "last": 1,
    })


def _tag_layout(config):
    R = config.rows
    return data.StructLayout({
        "av": 1,                                   # 0: QK^T group, 1: A V pass
        "rows": unsigned(_bits(R + 1)),            # QK: rows holding a column
        "kept": unsigned(R),                       # QK: rows whose column is kept
        "lanes": unsigned(config.lanes),           # QK: lanes holding a query
        "block_last": 1,                           # QK: the block's last group
        "head": unsigned(_bits(config.max_heads)),
        "block": unsigned(config.block_bits),
        "av_pass": unsigned(_bits(-(-config.head_dim // R))),
        "seq_last": 1,                             # AV: the sequence's last block
    })


def _group_layout(config):
    """A QK^T group: up to ``rows`` kept columns of one query block."""
    return data.StructLayout({
        "rows": unsigned(_bits(config.rows + 1)),      # rows holding a column
        "kept": unsigned(config.rows),                 # rows whose column is kept
        "lanes": unsigned(config.lanes),               # lanes holding a query
        "first": 1,                                    # the block's first group
        "last": 1,                                     # the block's last group
        "head": unsigned(_bits(config.max_heads)),
        "block": unsigned(config.block_bits),
    })


def _block_info_layout(config):
    return data.StructLayout({
        "n": unsigned(_bits(config.max_tokens + 1)),   # work items of the block
        "head": unsigned(_bits(config.max_heads)),
        "block": unsigned(config.block_bits),
        "slot": 1,
        "seq_last": 1,
        "lanes": unsigned(config.lanes),
    })


class AttentionEngine(wiring.Component):
    """Sub-vector-sparse multi-head attention on the shared PE array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``head_dim`` (``max_d / max_heads``) must be a multiple of ``lanes``.
    external_pe : bool
        Drive a PE array outside the engine through ``pe_i``/``pe_o``
        (:func:`hw.pe_array.pe_ports`) instead of an array of its own.

    Attributes
    ----------
    qkv : ``In(stream)`` of :func:`hw.linear_engine.linear_output_layout` beats: each token's
        ``3 x heads x head_dim`` channels, ``lanes`` per beat, ``last`` on its final beat.
    masks : ``In(stream)`` of :func:`attention_mask_layout` beats, per sequence, head and block.
    o : ``Out(stream)`` of :func:`attention_output_layout` beats.
    released : ``Out(16)``
        Sequences whose QKV slot has been freed since the start (the run-through top lets the
        projection of sequence ``s`` start once ``s - 2`` has been released).
    n_tokens : ``Out``
        The ``TOKENS`` register.
    csr_addr, csr_w_en, csr_w_data, csr_r_data :
        Register port (:class:`Reg`), as :class:`hw.linear_engine.LinearEngine`'s.
    """

    def __init__(self, config, *, external_pe=False):
        if config.head_dim % config.lanes:
            raise ValueError("AttentionEngine needs head_dim ({!r}) to be a multiple of lanes "
                             "({!r})".format(config.head_dim, config.lanes))
        self._config = config
        self._external_pe = external_pe
        super().__init__({
            **(pe_ports(config) if external_pe else {}),
            "qkv": In(stream.Signature(linear_output_layout(config))),
            "masks": In(stream.Signature(attention_mask_layout(config))),
            "o": Out(stream.Signature(attention_output_layout(config))),
            "released": Out(16),
            "n_tokens": Out(range(config.max_tokens + 1)),
            **register_port(4),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, R, HD = cfg.lanes, cfg.rows, cfg.head_dim
        T, H, NB = cfg.max_tokens, cfg.max_heads, cfg.max_blocks
        GW = HD // V                        # QKV beats per head and part of a token
        passes = -(-HD // R)                # A V passes of R output dimensions
        act = arith.shape_of(contract.ACT)
        word = data.ArrayLayout(act, HD)    # one token's q, k or v of one head

        pe = use_pe(m, self, cfg, self._external_pe)
        m.submodules.decoder = dec = SubvectorDecoder(cfg, order="block")
        m.submodules.softmax = sm = SoftmaxUnit(cfg)

        # ---- registers ----------------------------------------------------------------
        # Shape registers are kept whole so that a too-large value is refused, not truncated.
        n_tok_reg, heads_reg = Signal(32), Signal(32)
        n_tok = n_tok_reg[:_bits(T + 1)]
        heads = heads_reg[:_bits(H + 1)]
        seqs = Signal(16)
        sm_mult = Signal(arith.shape_of(contract.REQ_MULT))
        sm_shift = Signal(arith.shape_of(contract.REQ_SHIFT))
        out_mult = Signal(arith.shape_of(contract.REQ_MULT))
        out_shift = Signal(arith.shape_of(contract.REQ_SHIFT))
        running, done = Signal(), Signal()
        err_config, err_mask, err_qkv, err_ovf, err_sm = (Signal(name=n) for n in (
            "err_config", "err_mask", "err_qkv", "err_ovf", "err_sm"))
        cycles, busy, mac_lanes, subvectors, beats_out = (Signal(32, name=n) for n in (
            "cycles", "busy", "mac_lanes", "subvectors", "beats_out"))
        blocks = Signal(range(NB + 1))
        m.d.comb += [blocks.eq((n_tok + V - 1) >> contract.ceil_log2(V)),
                     self.n_tokens.eq(n_tok), sm.mult.eq(sm_mult), sm.shift.eq(sm_shift)]
        config_ok = ((n_tok_reg != 0) & (n_tok_reg <= T) & (heads_reg != 0) & (heads_reg <= H)
                     & (seqs != 0))
        start, clear_error = Signal(), Signal()
        settings = ((Reg.TOKENS, n_tok_reg), (Reg.HEADS, heads_reg), (Reg.SEQUENCES, seqs),
                    (Reg.SOFTMAX_MULT, sm_mult), (Reg.SOFTMAX_SHIFT, sm_shift),
                    (Reg.OUT_MULT, out_mult), (Reg.OUT_SHIFT, out_shift))

        with m.If(self.csr_w_en):
            with m.Switch(self.csr_addr):
                with m.Case(Reg.CTRL):
                    m.d.comb += [start.eq(self.csr_w_data[0]), clear_error.eq(self.csr_w_data[2])]
                for reg, sig in settings:
                    with m.Case(reg):
                        m.d.sync += sig.eq(self.csr_w_data)
        status = Cat(running, done, Cat(err_config, err_mask, err_qkv, err_ovf, err_sm).any(),
                     Const(0, 5), err_config, err_mask, err_qkv, err_ovf, err_sm)
        register_reads(m, self, ((Reg.STATUS, status),) + settings + (
            (Reg.CYCLES, cycles), (Reg.BUSY, busy), (Reg.MAC_LANES, mac_lanes),
            (Reg.SUBVECTORS, subvectors), (Reg.BEATS_OUT, beats_out)))
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- QKV buffers: two sequence slots of (token, head) words -----------------------
        depth = 2 * T * H
        mems = [Memory(shape=word, depth=depth, init=[]) for _ in range(3)]
        for name, mem in zip("qkv", mems):
            m.submodules[f"{name}_buf"] = mem

        def buf_addr(slot, tok, head):
            return (slot * T + tok) * H + head

        w_slot = Signal()
        w_tok = Signal(range(T))
        w_part = Signal(range(3))
        w_head = Signal(range(H))
        w_off = Signal(range(GW))
        slot_full = Signal(2)
        seqs_in = Signal(16)
        beat = self.qkv.payload
        m.d.comb += self.qkv.ready.eq(running & ~slot_full.bit_select(w_slot, 1)
                                      & (seqs_in != seqs))
        take_qkv = self.qkv.valid & self.qkv.ready
        at_end = (w_off == GW - 1) & (w_head == heads - 1) & (w_part == 2)
        for idx, mem in enumerate(mems):
            wp = mem.write_port(granularity=V)
            m.d.comb += [wp.addr.eq(buf_addr(w_slot, w_tok, w_head)),
                         wp.data.eq(Cat(*[beat.data[e % V][:contract.ACT.bits]
                                          for e in range(HD)])),
                         wp.en.eq(Mux(take_qkv & (w_part == idx), 1 << w_off, 0))]
        with m.If(take_qkv):
            with m.If(~Cat(*[arith.fits(beat.data[l], contract.ACT) for l in range(V)]).all()
                      | (beat.last != at_end)):
                m.d.sync += err_qkv.eq(1)
            with m.If(beat.last):
                # A short token still closes here; a long one kept overwriting its last word.
                m.d.sync += [w_off.eq(0), w_head.eq(0), w_part.eq(0)]
                with m.If(w_tok == n_tok - 1):
                    m.d.sync += [w_tok.eq(0), w_slot.eq(~w_slot), seqs_in.eq(seqs_in + 1),
                                 slot_full.bit_select(w_slot, 1).eq(1)]
                with m.Else():
                    m.d.sync += w_tok.eq(w_tok + 1)
            with m.Elif(~at_end):
                m.d.sync += w_off.eq(Mux(w_off == GW - 1, 0, w_off + 1))
                with m.If(w_off == GW - 1):
                    m.d.sync += w_head.eq(Mux(w_head == heads - 1, 0, w_head + 1))
                    with m.If(w_head == heads - 1):
                        m.d.sync += w_part.eq(w_part + 1)

        # ---- column lists (4 block slots) and block descriptors ---------------------------
        cl_layout = data.StructLayout({"col": unsigned(cfg.column_bits), "kept": 1})
        m.submodules.col_list = cl_mem = Memory(shape=cl_layout, depth=4 * T, init=[])
        info_layout = _block_info_layout(cfg)
        info = [Signal(info_layout, name=f"info_{s}") for s in range(4)]

        # ---- loader: next block's Q rows, next group's K rows ------------------------------
        q_next = [Signal(word, name=f"q_next_{l}") for l in range(V)]
        k_next = [Signal(word, name=f"k_next_{r}") for r in range(R)]
        group_layout = _group_layout(cfg)
        nx = Signal(group_layout)           # the loaded group, waiting for the issuer
        nx_valid, pend = Signal(), Signal()
        l_slot = Signal()
        l_head = Signal(range(H))
        l_block = Signal(range(NB))
        l_bslot = Signal(2)                 # column-list slot of the block being loaded
        l_items = Signal(range(T + 1))
        l_first = Signal(init=1)
        g_count = Signal(range(R + 1))
        g_kept = Signal(R)
        l_wait, l_qload, l_items_st = 0, 1, 2
        l_state = Signal(range(3))
        ql = Signal(range(V + 1))
        ql_d = Signal(range(V))
        ql_ok_d, ql_valid_d = Signal(), Signal()
        kd_idx = Signal(range(R))
        kd_valid = Signal()
        lanes = Signal(V)
        m.d.comb += lanes.eq(Cat(*[(l_block * V + l) < n_tok for l in range(V)]))

        q_rp = mems[0].read_port()
        k_rp = mems[1].read_port()
        loader_free = ~nx_valid & ~pend
        with m.Switch(l_state):
            with m.Case(l_wait):
                with m.If(running & slot_full.bit_select(l_slot, 1)):
                    m.d.sync += [l_state.eq(l_qload), ql.eq(0)]
            with m.Case(l_qload):
                with m.If(loader_free):
                    tok = l_block * V + ql
                    m.d.comb += [q_rp.addr.eq(buf_addr(l_slot, tok, l_head)), q_rp.en.eq(1)]
                    m.d.sync += [ql.eq(ql + 1), ql_d.eq(ql), ql_ok_d.eq(tok < n_tok),
                                 ql_valid_d.eq(1)]
                    with m.If(ql == V - 1):
                        m.d.sync += l_state.eq(l_items_st)
        with m.If(~(loader_free & (l_state == l_qload))):
            m.d.sync += ql_valid_d.eq(0)
        with m.If(ql_valid_d):
            for l in range(V):
                with m.If(ql_d == l):
                    m.d.sync += q_next[l].eq(Mux(ql_ok_d, q_rp.data, 0))

        item = dec.o.payload
        m.d.comb += dec.o.ready.eq((l_state == l_items_st) & loader_free)
        take_item = dec.o.valid & dec.o.ready
        bad_col = ~item.empty & (item.column >= n_tok)
        item_kept = ~item.empty & ~bad_col
        cl_wp = cl_mem.write_port()
        m.d.comb += [k_rp.addr.eq(buf_addr(l_slot, item.column, l_head)), k_rp.en.eq(take_item),
                     cl_wp.addr.eq(l_bslot * T + l_items), cl_wp.data.col.eq(item.column),
                     cl_wp.data.kept.eq(item_kept), cl_wp.en.eq(take_item)]
        m.d.sync += [kd_valid.eq(take_item), kd_idx.eq(g_count)]
        with m.If(kd_valid):
            for r in range(R):
                with m.If(kd_idx == r):
                    m.d.sync += k_next[r].eq(k_rp.data)
        with m.If(pend):
            m.d.sync += [pend.eq(0), nx_valid.eq(1)]
        with m.If(take_item):
            kept_now = g_kept | (item_kept << g_count)[:R]
            seq_last = (l_head == heads - 1) & (l_block == blocks - 1)
            with m.If(bad_col | (item.block != l_block)
                      | (item.col_last & (item.last != (l_block == blocks - 1)))):
                m.d.sync += err_mask.eq(1)
            with m.If(item_kept):
                m.d.sync += subvectors.eq(subvectors + 1)
            m.d.sync += [l_items.eq(l_items + 1), g_count.eq(g_count + 1), g_kept.eq(kept_now)]
            with m.If(item.col_last | (g_count == R - 1)):
                m.d.sync += [pend.eq(1), nx.rows.eq(g_count + 1), nx.kept.eq(kept_now),
                             nx.first.eq(l_first), nx.last.eq(item.col_last), nx.lanes.eq(lanes),
                             nx.head.eq(l_head), nx.block.eq(l_block), l_first.eq(item.col_last),
                             g_count.eq(0), g_kept.eq(0)]
            with m.If(item.col_last):
                block_info = pack_layout(m, info_layout, {
                    "n": l_items + 1, "head": l_head, "block": l_block, "slot": l_slot,
                    "seq_last": seq_last, "lanes": lanes}, name="info_in")
                for s in range(4):
                    with m.If(l_bslot == s):
                        m.d.sync += info[s].eq(block_info)
                m.d.sync += [l_bslot.eq(l_bslot + 1), l_items.eq(0), ql.eq(0),
                             l_state.eq(l_qload)]
                with m.If(l_block == blocks - 1):
                    m.d.sync += l_block.eq(0)
                    with m.If(l_head == heads - 1):
                        m.d.sync += [l_head.eq(0), l_slot.eq(~l_slot), l_state.eq(l_wait)]
                    with m.Else():
                        m.d.sync += l_head.eq(l_head + 1)
                with m.Else():
                    m.d.sync += l_block.eq(l_block + 1)
        with m.If(dec.error):
            m.d.sync += err_mask.eq(1)

        # ---- issue: QK groups from registers, A V beats through a read pipeline ------------
        tags = fifo.SyncFIFO(width=_tag_layout(cfg).size, depth=4)
        m.submodules.tags = tags
        qk_done = Signal(16)                # blocks whose QK^T has been issued
        av_done = Signal(16)                # blocks whose A V has been issued (S0)
        pending = Signal(2)
        m.d.comb += pending.eq(qk_done - av_done)
        oldest = Signal(info_layout)
        m.d.comb += oldest.eq(Array([i.as_value() for i in info])[av_done[:2]])
        pfull = Signal(2)                   # probability slot holds a finished block
        st_idle, st_qk, st_av = 0, 1, 2
        state = Signal(range(3))

        # QK^T: current group registers, rotated by one element per beat.
        q_cur = [Signal(word, name=f"q_cur_{l}") for l in range(V)]
        k_cur = [Signal(word, name=f"k_cur_{r}") for r in range(R)]
        qk_busy = Signal()
        cur = Signal(group_layout)          # the group being issued
        qk_k = Signal(range(HD))

        # A V: S0 address generation -> S1 (column list, probabilities) -> S2 (V row) -> PE.
        s0_active = Signal()
        av_i = Signal(range(T))
        av_p = Signal(range(passes))
        av_info = Signal(info_layout)
        av_cslot = Signal(2)
        av_pslot = Signal()
        s1_valid, s1_first, s1_last, s1_release, s1_olast = (Signal(name=f"s1_{n}") for n in (
            "valid", "first", "last", "release", "olast"))
        s1_p = Signal(range(passes))
        s2_valid, s2_first, s2_last, s2_release, s2_olast, s2_kept = (
            Signal(name=f"s2_{n}") for n in ("valid", "first", "last", "release", "olast", "kept"))
        s2_p = Signal(range(passes))
        s2_prob = Signal(data.ArrayLayout(arith.shape_of(contract.PROB), V))
        cl_rp = cl_mem.read_port(transparent_for=())
        m.submodules.prob_buf = p_mem = Memory(
            shape=data.ArrayLayout(arith.shape_of(contract.PROB), V), depth=2 * T, init=[])
        p_rp = p_mem.read_port(transparent_for=())
        v_rp = mems[2].read_port()

        tag_in = Signal(_tag_layout(cfg))
        av_fire = Signal()
        adv = Signal()
        m.d.comb += adv.eq(~s2_valid | (pe.i.ready & (~s2_last | tags.w_rdy)))
        m.d.comb += av_fire.eq(s2_valid & adv)
        qk_valid = Signal()
        m.d.comb += qk_valid.eq((state == st_qk) & qk_busy & ~s1_valid & ~s2_valid)
        qk_beat_last = qk_k == HD - 1
        qk_fire = Signal()
        m.d.comb += qk_fire.eq(qk_valid & pe.i.ready & (~qk_beat_last | tags.w_rdy))
        qk_end = qk_fire & qk_beat_last
        take_group = Signal()
        m.d.comb += take_group.eq((state == st_qk) & nx_valid & (~qk_busy | (qk_end & ~cur.last)))

        with m.Switch(state):
            with m.Case(st_idle):
                want_av = (pending == 2) | ((pending == 1) & oldest.seq_last)
                # The read pipeline must be empty: its stages use the block descriptor.
                with m.If(running & want_av & pfull.bit_select(av_done[0], 1)
                          & ~s1_valid & ~s2_valid):
                    m.d.sync += [state.eq(st_av), s0_active.eq(1), av_i.eq(0), av_p.eq(0),
                                 av_info.eq(oldest), av_cslot.eq(av_done[:2]),
                                 av_pslot.eq(av_done[0])]
                with m.Elif(running & ~want_av & nx_valid):
                    m.d.sync += state.eq(st_qk)
            with m.Case(st_qk):
                with m.If(qk_fire):
                    m.d.sync += qk_k.eq(Mux(qk_beat_last, 0, qk_k + 1))
                    for sig in q_cur + k_cur:
                        m.d.sync += sig.eq(Cat(sig.as_value()[contract.ACT.bits:],
                                               sig.as_value()[:contract.ACT.bits]))
                with m.If(qk_end):
                    m.d.sync += qk_busy.eq(0)
                    with m.If(cur.last):
                        m.d.sync += [qk_done.eq(qk_done + 1), state.eq(st_idle)]
                with m.If(take_group):
                    m.d.sync += [qk_busy.eq(1), nx_valid.eq(0), cur.eq(nx)]
                    m.d.sync += [k_cur[r].eq(k_next[r]) for r in range(R)]
                    with m.If(nx.first):
                        m.d.sync += [q_cur[l].eq(q_next[l]) for l in range(V)]
            with m.Case(st_av):
                with m.If(adv & s0_active):
                    last_i = av_i == av_info.n - 1
                    with m.If(last_i):
                        m.d.sync += [av_i.eq(0), av_p.eq(av_p + 1)]
                        with m.If(av_p == passes - 1):
                            m.d.sync += [s0_active.eq(0), av_done.eq(av_done + 1),
                                         pfull.bit_select(av_pslot, 1).eq(0), state.eq(st_idle)]
                    with m.Else():
                        m.d.sync += av_i.eq(av_i + 1)

        s0_valid = (state == st_av) & s0_active
        s0_final = (av_i == av_info.n - 1) & (av_p == passes - 1)
        m.d.comb += [cl_rp.addr.eq(av_cslot * T + av_i), cl_rp.en.eq(adv),
                     p_rp.addr.eq(av_pslot * T + av_i), p_rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s1_valid.eq(s0_valid), s1_first.eq(av_i == 0),
                         s1_last.eq(av_i == av_info.n - 1), s1_p.eq(av_p),
                         s1_release.eq(s0_final & av_info.seq_last),
                         s1_olast.eq(av_info.seq_last & (av_p == passes - 1))]
        m.d.comb += [v_rp.addr.eq(buf_addr(av_info.slot, cl_rp.data.col, av_info.head)),
                     v_rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                         s2_p.eq(s1_p), s2_release.eq(s1_release), s2_olast.eq(s1_olast),
                         s2_kept.eq(cl_rp.data.kept), s2_prob.eq(p_rp.data)]
        with m.If(av_fire & s2_release):
            for s in range(2):
                with m.If(av_info.slot == s):
                    m.d.sync += slot_full[s].eq(0)
            m.d.sync += self.released.eq(self.released + 1)

        # The two beat sources, each packed as one value (see hw.packing).
        pe_layout = pe.i.payload.shape()
        v_row = v_rp.data
        av_scalars = []
        for r in range(R):
            options = [v_row[min(p * R + r, HD - 1)] for p in range(passes)]
            av_scalars.append(Array(options)[s2_p] if passes > 1 else options[0])
        av_payload = pack_layout(m, pe_layout, {
            "route": Route.SHARED_VECTOR, "clear": s2_first, "last": s2_last, "bypass": 0,
            "mult": out_mult, "shift": out_shift, "scalar": av_scalars,
            "vector": [[s2_prob[l] for l in range(V)]],
            "mask": [Mux(s2_kept & (s2_p * R + r < HD), av_info.lanes, 0) for r in range(R)],
        }, name="av_beat")
        qk_payload = pack_layout(m, pe_layout, {
            "route": Route.SHARED_VECTOR, "clear": qk_k == 0, "last": qk_beat_last, "bypass": 1,
            "scalar": [k_cur[r][0] for r in range(R)],
            "vector": [[q_cur[l][0] for l in range(V)]],
            "mask": [Mux(cur.kept[r], cur.lanes, 0) for r in range(R)],
        }, name="qk_beat")
        m.d.comb += [pe.i.valid.eq(s2_valid | qk_valid),
                     pe.i.payload.eq(Mux(s2_valid, av_payload, qk_payload))]
        beat_ok = Mux(s2_valid, av_fire, qk_fire)
        m.d.comb += tag_in.eq(pack_layout(m, _tag_layout(cfg), {
            "av": s2_valid, "rows": cur.rows, "kept": cur.kept, "lanes": cur.lanes,
            "block_last": cur.last, "head": Mux(s2_valid, av_info.head, cur.head),
            "block": Mux(s2_valid, av_info.block, cur.block), "av_pass": s2_p,
            "seq_last": s2_olast}, name="tag_in"))
        m.d.comb += [tags.w_data.eq(tag_in),
                     tags.w_en.eq(beat_ok & pe.i.payload.last)]
        with m.If(beat_ok):
            m.d.sync += [busy.eq(busy + 1),
                         mac_lanes.eq(mac_lanes + _popcount(pe.i.payload.mask.as_value()))]

        # ---- results: QK^T rows -> softmax -> probability buffer; A V rows -> o -----------
        tag = data.View(_tag_layout(cfg), tags.r_data)
        row = pe.o.payload
        to_softmax = tags.r_rdy & ~tag.av & (row.row < tag.rows)
        dim = Signal(range(passes * R + 1))
        m.d.comb += dim.eq(tag.av_pass * R + row.row)
        to_out = tags.r_rdy & tag.av & (dim < HD)
        m.d.comb += [
            sm.i.valid.eq(pe.o.valid & to_softmax),
            sm.i.payload.score.eq(row.data),
            sm.i.payload.kept.eq(Mux(tag.kept.bit_select(row.row, 1), tag.lanes, 0)),
            sm.i.payload.last.eq(tag.block_last & (row.row == tag.rows - 1)),
            self.o.valid.eq(pe.o.valid & to_out),
            self.o.payload.head.eq(tag.head), self.o.payload.block.eq(tag.block),
            self.o.payload.dim.eq(dim),
            self.o.payload.last.eq(tag.seq_last & (dim == HD - 1)),
            pe.o.ready.eq(tags.r_rdy & Mux(to_softmax, sm.i.ready,
                                           Mux(to_out, self.o.ready, 1))),
            tags.r_en.eq(pe.o.valid & pe.o.ready & row.last),
        ]
        m.d.comb += [self.o.payload.data[l].eq(row.data[l][:contract.ACT.bits])
                     for l in range(V)]
        with m.If(pe.o.valid & pe.o.ready & row.overflow & (to_softmax | to_out)):
            m.d.sync += err_ovf.eq(1)
        with m.If(sm.error):
            m.d.sync += err_sm.eq(1)

        pw_slot = Signal()
        pw_idx = Signal(range(T))
        p_wp = p_mem.write_port()
        m.d.comb += [sm.o.ready.eq(~pfull.bit_select(pw_slot, 1)),
                     p_wp.addr.eq(pw_slot * T + pw_idx), p_wp.data.eq(sm.o.payload.prob),
                     p_wp.en.eq(sm.o.valid & sm.o.ready)]
        with m.If(sm.o.valid & sm.o.ready):
            with m.If(sm.o.payload.last):
                m.d.sync += [pw_idx.eq(0), pw_slot.eq(~pw_slot),
                             pfull.bit_select(pw_slot, 1).eq(1)]
            with m.Else():
                m.d.sync += pw_idx.eq(pw_idx + 1)

        seqs_out = Signal(16)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += beats_out.eq(beats_out + 1)
            with m.If(self.o.payload.last):
                m.d.sync += seqs_out.eq(seqs_out + 1)
        with m.If(running & (seqs_out == seqs)):
            m.d.sync += [running.eq(0), done.eq(1)]

        m.d.comb += dec.i.valid.eq(self.masks.valid & running)
        m.d.comb += [dec.i.payload.eq(self.masks.payload),
                     self.masks.ready.eq(dec.i.ready & running)]

        # ---- start and error clearing (last, so they take precedence) ---------------------
        with m.If(clear_error):
            m.d.sync += [err_config.eq(0), err_mask.eq(0), err_qkv.eq(0), err_ovf.eq(0),
                         err_sm.eq(0)]
        with m.If(start):
            m.d.sync += [cycles.eq(0), busy.eq(0), mac_lanes.eq(0), subvectors.eq(0),
                         beats_out.eq(0), done.eq(0), seqs_in.eq(0), seqs_out.eq(0),
                         self.released.eq(0), slot_full.eq(0), w_slot.eq(0), w_tok.eq(0),
                         w_part.eq(0), w_head.eq(0), w_off.eq(0), l_state.eq(l_wait),
                         l_slot.eq(0), l_head.eq(0), l_block.eq(0), l_bslot.eq(0),
                         l_items.eq(0), l_first.eq(1), g_count.eq(0), g_kept.eq(0),
                         nx_valid.eq(0), pend.eq(0), qk_done.eq(0), av_done.eq(0),
                         pfull.eq(0), pw_slot.eq(0), pw_idx.eq(0), state.eq(st_idle),
                         qk_busy.eq(0), qk_k.eq(0), s0_active.eq(0)]
            with m.If(config_ok):
                m.d.sync += running.eq(1)
            with m.Else():
                m.d.sync += [err_config.eq(1), running.eq(0)]
        return m
