"""The sub-vector predictor on chip: pooled-query products on the PE array, then the keep
selection, into the attention engine's mask stream.

It computes exactly the golden policy (:meth:`golden.subvector.SubvectorAttention.keep`,
``granularity="subvector"``, ``v = lanes``): for each sequence, head and query block ``u``
(``lanes`` consecutive queries), the pooled query ``qp[u] = div_half_up(sum of the block's
queries, count)`` per channel (the last block may be partial), the predicted scores
``pred[u, j] = qp[u] . K[j]`` for every key ``j``, and the mask of the ``keep`` columns with the
highest score, ties to the lower column (:class:`hw.keep_select.KeepSelect`). ``keep`` is a
register (the host's :func:`hw.keep_select.keep_count`); ``keep >= tokens`` is dense attention:
every column is kept and no products are issued.

Dataflow (a stage between the QKV projection and the attention engine,
:class:`hw.block.Block`):

* ``i`` -> ``o``: the QKV beats pass through combinationally (a beat moves when the attention
  engine takes it and this unit has room), and are written on the way: K into a two-slot key
  buffer of (token, head) words, Q summed per query block in a ``heads x head_dim`` register
  file and, on the block's last token, divided (``contract.div_half_up``) into a pooled-query
  buffer. Both slots hold a whole sequence, like the attention engine's.
* **Products** on the array, :attr:`hw.pe_array.Route.SHARED_VECTOR`: a *unit group* of
  ``rows`` query blocks times a *key group* of ``lanes`` keys, ``head_dim`` beats; beat ``c``
  shares the key sub-vector ``K[group, c]`` with every row and gives row ``r`` the scalar
  ``qp[u_r, c]``; row ``r``'s raw accumulators are ``pred[u_r, group]``. A loader prefetches
  the next key group's rows (and the next unit group's pooled queries) into registers while the
  array works. MACs: ``ceil(N / lanes) x N x head_dim`` per head, ``1 / lanes`` of QK^T.
* **Scores** of a unit group go into one half of a double-buffered score memory
  (``2 x rows x ceil(max_tokens / lanes)`` words of ``lanes`` scores); a feeder streams each
  query block's scores into :class:`hw.keep_select.KeepSelect`, whose mask beat
  (:func:`hw.attention_engine.attention_mask_layout`, ``last`` on a head's last block) leaves
  on ``masks``. The products of the next unit group fill the other half meanwhile.

Cost per unit group: ``ceil(N / lanes) x head_dim`` array beats; the selection takes
``(B + 1) x ceil(N / lanes) + 2`` cycles a block (``B`` the score bits,
:func:`golden.contract.predictor_score_format`), and runs beside the array.

Registers: :data:`REGISTERS`. Errors: ``config`` (N, H or sequences out of range, ``keep`` 0 or
above N), ``qkv`` (a short or long token, a value outside int8; the beat still passes on, the
attention engine flags it too), ``overflow`` (an accumulator left its format: cannot happen with
int8 operands, kept as a check). DONE once every sequence's mask beats have left.
"""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, fifo, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import bits_for, log2_exact
from hw.attention_engine import attention_mask_layout, qkv_writer_position
from hw.engine import Engine, EngineRegisters, Setting
from hw.keep_select import KeepSelect
from hw.linear_engine import activation_layout
from hw.pe_array import PEClientSignature, Route

__all__ = ["REGISTERS", "Predictor", "predictor_score_shape"]

#: The predictor's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "predictor",
    settings=[
        Setting("tokens", doc="tokens N of a sequence"),
        Setting("heads", doc="heads H"),
        Setting("sequences", 16, doc="sequences in the run"),
        Setting("keep", doc="key columns kept per query block (keep_count(N, rho)); >= N: dense"),
    ],
    errors=(("qkv", "a QKV token of the wrong length, or a value outside int8"),
            ("overflow", "an accumulator left its format")),
    counters=(("busy", "cycles the unit gave the PE array an operand beat"),
              ("mac_lanes", "lane-cycles doing a multiply-accumulate"),
              ("blocks", "mask beats out (query blocks)")))


def predictor_score_shape(config):
    """Shape of one predicted score at ``config``'s head dimension."""
    return arith.shape_of(contract.predictor_score_format(config.head_dim))


def _group_layout(config):
    """A loaded key group, waiting for the issuer."""
    return data.StructLayout({
        "units": unsigned(config.rows),            # rows holding a query block
        "lanes": unsigned(config.lanes),           # lanes holding a key
        "first": 1,                                # the unit group's first key group
        "g": unsigned(bits_for(config.max_blocks)),
        "last_g": 1,                               # the unit group's last key group
        "half": 1,                                 # score buffer half of the unit group
        "rows": unsigned(bits_for(config.rows + 1)),
        "head_last": 1,                            # the head's last unit group
    })


def _tag_layout(config):
    return data.StructLayout({
        "g": unsigned(bits_for(config.max_blocks)), "last_g": 1, "half": 1,
        "rows": unsigned(bits_for(config.rows + 1)), "head_last": 1,
    })


def _half_layout(config):
    return data.StructLayout({"rows": unsigned(bits_for(config.rows + 1)), "head_last": 1})


class Predictor(Engine):
    """Sub-vector predictor and keep selection (see the module docstring).

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``head_dim`` must be a multiple of ``lanes``.

    Attributes
    ----------
    i, o : QKV beats (:func:`hw.linear_engine.activation_layout`), passed through.
    masks : ``Out(stream)`` of :func:`hw.attention_engine.attention_mask_layout` beats, per
        sequence, head and query block.
    pe : ``Out(PEClientSignature)``
    csr : ``In(RegisterSignature)``, registers :data:`REGISTERS`.
    """

    registers = REGISTERS

    def __init__(self, config):
        if config.head_dim % config.lanes:
            raise ValueError("Predictor needs head_dim ({!r}) to be a multiple of lanes ({!r})"
                             .format(config.head_dim, config.lanes))
        super().__init__(config, {
            "i": In(stream.Signature(activation_layout(config))),
            "o": Out(stream.Signature(activation_layout(config))),
            "masks": Out(stream.Signature(attention_mask_layout(config))),
            "pe": Out(PEClientSignature(config)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        T, H, V, R = cfg.max_tokens, cfg.max_heads, cfg.lanes, cfg.rows
        ctl = self.control(m)
        st = ctl.settings
        m.d.comb += ctl.config_ok.eq((st.tokens != 0) & (st.tokens <= T) & (st.heads != 0)
                                     & (st.heads <= H) & (st.sequences != 0) & (st.keep != 0)
                                     & (st.keep <= st.tokens))
        dp = Module()
        m.submodules.datapath = ResetInserter(ctl.pulse.start)(dp)
        ns = SimpleNamespace(ctl=ctl)
        ns.n_tok = Signal(range(T + 1))
        ns.heads = Signal(range(H + 1))
        ns.blocks = Signal(range(cfg.max_blocks + 1))
        ns.ugroups = Signal(range(cfg.max_blocks + 1))
        ns.dense = Signal()
        m.d.comb += [ns.n_tok.eq(st.tokens), ns.heads.eq(st.heads),
                     ns.blocks.eq((ns.n_tok + V - 1) >> log2_exact(V)),
                     ns.ugroups.eq((ns.blocks + R - 1) // R),
                     ns.dense.eq(st.keep >= st.tokens)]
        ns.word = data.ArrayLayout(arith.shape_of(contract.ACT), cfg.head_dim)
        dp.submodules.k_buf = ns.k_mem = Memory(shape=ns.word, depth=2 * T * H, init=[])
        dp.submodules.qp_buf = ns.qp_mem = Memory(shape=ns.word, depth=2 * cfg.max_blocks * H,
                                                  init=[])
        dp.submodules.select = ns.ks = KeepSelect(cfg, predictor_score_shape(cfg))
        m.d.comb += [ns.ks.n.eq(ns.n_tok), ns.ks.keep.eq(st.keep)]
        self._writer(dp, ns)
        self._loader(dp, ns)
        self._issuer(dp, ns)
        self._scores(dp, ns)
        self._feeder(dp, ns)
        self._masks(dp, ns)
        return m

    def _writer(self, m, ns):
        """QKV beats pass on to ``o``; K into the key buffer, Q summed per query block and, on
        the block's last token, pooled into the pooled-query buffer."""
        cfg = self._config
        V, T, H, HD, NB = cfg.lanes, cfg.max_tokens, cfg.max_heads, cfg.head_dim, cfg.max_blocks
        GW = HD // V
        ns.slot_full = Signal(2)
        # The pass-through: a beat moves on both sides at once.
        gate = stream.Signature(activation_layout(cfg)).flip().create(path=("qkv_in",))
        m.d.comb += [gate.valid.eq(self.i.valid & self.o.ready), gate.payload.eq(self.i.payload),
                     self.o.valid.eq(self.i.valid & gate.ready), self.o.payload.eq(self.i.payload),
                     self.i.ready.eq(self.o.ready & gate.ready)]
        w = qkv_writer_position(m, cfg, gate, ns.ctl, ns.n_tok, ns.heads, ns.slot_full)
        with m.If(w.seq_end):
            m.d.sync += ns.slot_full.bit_select(w.slot, 1).eq(1)
        beat = self.i.payload
        chunk = Cat(*[beat.data[l][:contract.ACT.bits] for l in range(V)])
        kw = ns.k_mem.write_port(granularity=V)
        m.d.comb += [kw.addr.eq((w.slot * T + w.tok) * H + w.head), kw.data.eq(chunk.replicate(GW)),
                     kw.en.eq(Mux(w.take & (w.part == 1), 1 << w.off, 0))]
        # Running block sums: one register-file entry per (head, chunk), read combinationally.
        sum_shape = arith.shape_of(contract.pooled_sum_format(V))
        sums = Memory(shape=data.ArrayLayout(sum_shape, V), depth=H * GW, init=[])
        m.submodules.q_sums = sums
        s_rp, s_wp = sums.read_port(domain="comb"), sums.write_port()
        in_block = w.tok[:log2_exact(V)] if V > 1 else Const(0, 1)
        first = in_block == 0
        closes = (in_block == V - 1) | (w.tok == ns.n_tok - 1)
        count = Signal(range(V + 1))
        m.d.comb += [count.eq(in_block + 1), s_rp.addr.eq(w.head * GW + w.off),
                     s_wp.addr.eq(s_rp.addr)]
        total = [Signal(sum_shape, name=f"q_sum_{l}") for l in range(V)]
        m.d.comb += [t.eq(Mux(first, 0, s_rp.data[l])
                          + beat.data[l][:contract.ACT.bits].as_signed())
                     for l, t in enumerate(total)]
        q_take = w.take & (w.part == 0)
        m.d.comb += [s_wp.data.eq(Cat(*total)), s_wp.en.eq(q_take & ~closes)]
        qw = ns.qp_mem.write_port(granularity=V)
        pooled = Cat(*[arith.div_half_up(t, count)[:contract.ACT.bits] for t in total])
        m.d.comb += [qw.addr.eq((w.slot * NB + (w.tok >> log2_exact(V))) * H + w.head),
                     qw.data.eq(pooled.replicate(GW)),
                     qw.en.eq(Mux(q_take & closes, 1 << w.off, 0))]

    def _loader(self, m, ns):
        """Per full slot, head, unit group and key group: the unit group's pooled queries (on
        its first key group) and the key group's rows into registers, for the issuer. In dense
        mode the slot is only counted through (see :meth:`_masks`)."""
        cfg = self._config
        V, R, T, H, NB = cfg.lanes, cfg.rows, cfg.max_tokens, cfg.max_heads, cfg.max_blocks
        ns.qp_next = [Signal(ns.word, name=f"qp_next_{r}") for r in range(R)]
        ns.k_next = [Signal(ns.word, name=f"k_next_{l}") for l in range(V)]
        ns.nx = nx = Signal(_group_layout(cfg))
        ns.nx_valid, pend = Signal(), Signal()
        ns.l_slot = l_slot = Signal()
        l_head = Signal(range(H))
        l_ug = Signal(range(NB))
        l_g = Signal(range(NB))
        l_half = Signal()
        idx = Signal(range(max(V, R) + 1))
        rd = SimpleNamespace(valid=Signal(), k=Signal(), idx=Signal(range(max(V, R))))
        q_rp, k_rp = ns.qp_mem.read_port(), ns.k_mem.read_port()
        free = ~ns.nx_valid & ~pend
        unit = l_ug * R + idx
        key = l_g * V + idx
        ns.slot_done = Signal()             # the loader has read the slot's last group
        last_g = l_g == ns.blocks - 1
        last_ug = l_ug == ns.ugroups - 1
        rows = Mux(last_ug, ns.blocks - l_ug * R, R)
        with m.FSM(name="loader") as fsm:
            with m.State("WAIT"):
                with m.If(ns.ctl.running & ns.slot_full.bit_select(l_slot, 1) & ~ns.dense):
                    m.d.sync += idx.eq(0)
                    m.next = "QP"
            with m.State("QP"):
                with m.If(free):
                    m.d.comb += [q_rp.addr.eq((l_slot * NB + unit) * H + l_head), q_rp.en.eq(1)]
                    # Rows of query blocks past N (and lanes of keys past N, below) are read
                    # but masked off, so never used.
                    m.d.sync += [idx.eq(idx + 1), rd.valid.eq(1), rd.k.eq(0), rd.idx.eq(idx)]
                    with m.If(idx == R - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "K"
            with m.State("K"):
                with m.If(free):
                    m.d.comb += [k_rp.addr.eq((l_slot * T + key) * H + l_head), k_rp.en.eq(1)]
                    m.d.sync += [idx.eq(idx + 1), rd.valid.eq(1), rd.k.eq(1), rd.idx.eq(idx)]
                    with m.If(idx == V - 1):
                        m.d.sync += [idx.eq(0), pend.eq(1)]
                        m.d.sync += [nx.units.eq(Cat(*[r < rows for r in range(R)])),
                                     nx.lanes.eq(Cat(*[l_g * V + l < ns.n_tok for l in range(V)])),
                                     nx.first.eq(l_g == 0), nx.g.eq(l_g), nx.last_g.eq(last_g),
                                     nx.half.eq(l_half), nx.rows.eq(rows),
                                     nx.head_last.eq(last_ug)]
                        m.next = "K"
                        with m.If(~last_g):
                            m.d.sync += l_g.eq(l_g + 1)
                        with m.Else():
                            m.d.sync += [l_g.eq(0), l_half.eq(~l_half)]
                            m.next = "QP"
                            with m.If(~last_ug):
                                m.d.sync += l_ug.eq(l_ug + 1)
                            with m.Else():
                                m.d.sync += l_ug.eq(0)
                                with m.If(l_head != ns.heads - 1):
                                    m.d.sync += l_head.eq(l_head + 1)
                                with m.Else():
                                    m.d.comb += ns.slot_done.eq(1)
                                    m.d.sync += [l_head.eq(0), l_slot.eq(~l_slot)]
                                    m.next = "WAIT"
        with m.If(~(free & (fsm.ongoing("QP") | fsm.ongoing("K")))):
            m.d.sync += rd.valid.eq(0)
        with m.If(pend):
            m.d.sync += [pend.eq(0), ns.nx_valid.eq(1)]
        with m.If(rd.valid):
            for r in range(R):
                with m.If(~rd.k & (rd.idx == r)):
                    m.d.sync += ns.qp_next[r].eq(q_rp.data)
            for l in range(V):
                with m.If(rd.k & (rd.idx == l)):
                    m.d.sync += ns.k_next[l].eq(k_rp.data)
        with m.If(ns.slot_done):
            m.d.sync += ns.slot_full.bit_select(l_slot, 1).eq(0)

    def _issuer(self, m, ns):
        """Issue the loaded key groups, ``head_dim`` beats each, the pooled-query and key
        registers rotating by one element a beat. A unit group's first key group waits until
        its score half is free."""
        cfg = self._config
        V, R, HD = cfg.lanes, cfg.rows, cfg.head_dim
        req = self.pe.req
        ns.tags = tags = fifo.SyncFIFO(width=_tag_layout(cfg).size, depth=4)
        m.submodules.tags = tags
        ns.h_busy = Signal(2)               # a unit group owns the half (issued, not yet fed)
        qp_cur = [Signal(ns.word, name=f"qp_cur_{r}") for r in range(R)]
        k_cur = [Signal(ns.word, name=f"k_cur_{l}") for l in range(V)]
        cur = Signal(_group_layout(cfg))
        busy = Signal()
        k = Signal(range(HD))
        beat_last = k == HD - 1
        fire = Signal()
        m.d.comb += fire.eq(req.valid & req.ready)     # req.valid: busy, room for a tag
        end = fire & beat_last
        half_ok = ~ns.nx.first | ~ns.h_busy.bit_select(ns.nx.half, 1)
        take = ns.nx_valid & half_ok & (~busy | end)
        with m.If(fire):
            m.d.sync += k.eq(Mux(beat_last, 0, k + 1))
            for sig in qp_cur + k_cur:
                m.d.sync += sig.eq(Cat(sig.as_value()[contract.ACT.bits:],
                                       sig.as_value()[:contract.ACT.bits]))
        with m.If(end):
            m.d.sync += busy.eq(0)
        with m.If(take):
            m.d.sync += [busy.eq(1), ns.nx_valid.eq(0), cur.eq(ns.nx)]
            m.d.sync += [k_cur[l].eq(ns.k_next[l]) for l in range(V)]
            with m.If(ns.nx.first):
                m.d.sync += [qp_cur[r].eq(ns.qp_next[r]) for r in range(R)]
                m.d.sync += ns.h_busy.bit_select(ns.nx.half, 1).eq(1)
        payload = req.payload
        m.d.comb += [req.valid.eq(busy & (~beat_last | tags.w_rdy)),
                     payload.route.eq(Route.SHARED_VECTOR),
                     payload.clear.eq(k == 0), payload.last.eq(beat_last), payload.bypass.eq(1)]
        m.d.comb += [payload.scalar[r].eq(qp_cur[r][0]) for r in range(R)]
        m.d.comb += [payload.vector[0][l].eq(k_cur[l][0]) for l in range(V)]
        m.d.comb += [payload.mask[r].eq(Mux(cur.units[r], cur.lanes, 0)) for r in range(R)]
        tag = Signal(_tag_layout(cfg))
        m.d.comb += [tag.g.eq(cur.g), tag.last_g.eq(cur.last_g), tag.half.eq(cur.half),
                     tag.rows.eq(cur.rows), tag.head_last.eq(cur.head_last),
                     tags.w_data.eq(tag), tags.w_en.eq(end)]
        m.d.comb += [ns.ctl.count.busy.eq(fire),
                     ns.ctl.count.mac_lanes.eq(Mux(fire, arith.popcount(payload.mask.as_value()),
                                                   0))]

    def _scores(self, m, ns):
        """Result rows into the score buffer (always taken: the pipeline's
        :class:`hw.pipeline.ResultReserve` holds them); a unit group's last row fills its half."""
        cfg = self._config
        R, NB = cfg.rows, cfg.max_blocks
        res, tags = self.pe.res, ns.tags
        tag = data.View(_tag_layout(cfg), tags.r_data)
        shape = predictor_score_shape(cfg)
        ns.sc_mem = Memory(shape=data.ArrayLayout(shape, cfg.lanes), depth=2 * R * NB, init=[])
        m.submodules.scores = ns.sc_mem
        wp = ns.sc_mem.write_port()
        row = res.payload
        take = res.valid & res.ready
        m.d.comb += [res.ready.eq(tags.r_rdy), tags.r_en.eq(take & row.last),
                     wp.addr.eq((tag.half * R + row.row) * NB + tag.g),
                     wp.data.eq(Cat(*[row.data[l][:shape.width] for l in range(cfg.lanes)])),
                     wp.en.eq(take),
                     ns.ctl.raise_error.overflow.eq(take & row.overflow)]
        ns.h_full = Signal(2)
        ns.h_info = [Signal(_half_layout(cfg), name=f"half_{h}") for h in range(2)]
        with m.If(take & row.last & tag.last_g):
            m.d.sync += ns.h_full.bit_select(tag.half, 1).eq(1)
            for h in range(2):
                with m.If(tag.half == h):
                    m.d.sync += [ns.h_info[h].rows.eq(tag.rows),
                                 ns.h_info[h].head_last.eq(tag.head_last)]

    def _feeder(self, m, ns):
        """A full half, query block after query block, into the keep selection (S0 reads the
        score buffer, S1 is the beat)."""
        cfg = self._config
        R, NB = cfg.rows, cfg.max_blocks
        ks = ns.ks
        rp = ns.sc_mem.read_port(transparent_for=())
        f_half = Signal()
        f_r = Signal(range(R))
        f_g = Signal(range(NB))
        active = Signal()
        s1 = Signal(data.StructLayout({"valid": 1, "last": 1, "head_last": 1}))
        info = data.View(_half_layout(cfg), Array([h.as_value() for h in ns.h_info])[f_half])
        adv = ~s1.valid | ks.i.ready
        with m.If(~active & ns.h_full.bit_select(f_half, 1)):
            m.d.sync += [active.eq(1), f_r.eq(0), f_g.eq(0)]
        m.d.comb += [rp.addr.eq((f_half * R + f_r) * NB + f_g), rp.en.eq(adv)]
        block_end = f_g == ns.blocks - 1
        half_end = block_end & (f_r == info.rows - 1)
        with m.If(adv):
            m.d.sync += [s1.valid.eq(active), s1.last.eq(block_end),
                         s1.head_last.eq(info.head_last & half_end)]
            with m.If(active):
                m.d.sync += f_g.eq(Mux(block_end, 0, f_g + 1))
                with m.If(block_end):
                    m.d.sync += f_r.eq(f_r + 1)
                with m.If(half_end):
                    m.d.sync += [active.eq(0), f_half.eq(~f_half),
                                 ns.h_full.bit_select(f_half, 1).eq(0),
                                 ns.h_busy.bit_select(f_half, 1).eq(0)]
        m.d.comb += [ks.i.valid.eq(s1.valid), ks.i.payload.score.eq(rp.data),
                     ks.i.payload.last.eq(s1.last), ks.i.payload.head_last.eq(s1.head_last)]

    def _masks(self, m, ns):
        """``masks``: the keep selection's beats, or in dense mode every column of every block
        of a full slot (then the slot is free). DONE once every sequence's last head is out."""
        cfg = self._config
        T, H, NB = cfg.max_tokens, cfg.max_heads, cfg.max_blocks
        ks = ns.ks
        d_head = Signal(range(H))
        d_block = Signal(range(NB))
        dense_on = ns.dense & ns.ctl.running & ns.slot_full.bit_select(ns.l_slot, 1)
        all_cols = Signal(T)
        m.d.comb += all_cols.eq((Const(1, T + 1) << ns.n_tok) - 1)
        d_last = (d_block == ns.blocks - 1)
        m.d.comb += [
            self.masks.valid.eq(Mux(ns.dense, dense_on, ks.o.valid)),
            self.masks.payload.mask.eq(Mux(ns.dense, all_cols, ks.o.payload.mask)),
            self.masks.payload.last.eq(Mux(ns.dense, d_last, ks.o.payload.last)),
            ks.o.ready.eq(self.masks.ready & ~ns.dense)]
        with m.If(dense_on & self.masks.ready):
            m.d.sync += d_block.eq(Mux(d_last, 0, d_block + 1))
            with m.If(d_last):
                m.d.sync += d_head.eq(Mux(d_head == ns.heads - 1, 0, d_head + 1))
                with m.If(d_head == ns.heads - 1):
                    m.d.sync += [ns.slot_full.bit_select(ns.l_slot, 1).eq(0),
                                 ns.l_slot.eq(~ns.l_slot)]
        out = self.masks.valid & self.masks.ready
        heads_out = Signal(range(H + 1))
        seqs_out = Signal(16)
        with m.If(out & self.masks.payload.last):
            m.d.sync += heads_out.eq(Mux(heads_out == ns.heads - 1, 0, heads_out + 1))
            with m.If(heads_out == ns.heads - 1):
                m.d.sync += seqs_out.eq(seqs_out + 1)
        m.d.comb += [ns.ctl.count.blocks.eq(out),
                     ns.ctl.finished.eq(seqs_out == ns.ctl.settings.sequences)]
