"""Delta encoder: int8 tokens become the bitmap decoder's sparse streams (RTSA inter-frame delta).

For each spatial position ``p`` the encoder keeps a reference vector ``r`` (int8) in a memory
and a ``has_ref`` bit (see :class:`golden.delta.DeltaLinear` for the algorithm). A token ``x``
at position ``p`` is encoded as follows:

* ``delta_enable`` and ``has_ref[p]``: a *delta* token. ``delta = x - r`` (int9); element ``j``
  is sent when ``|delta_j| > tau``; ``r <- r + delta~`` (i.e. ``r_j <- x_j`` where sent).
* otherwise a *dense* token: ``r <- x``, ``has_ref[p] <- 1``. With ``delta_enable`` the
  elements ``x_j != 0`` are sent (a delta from a zero reference, the convention of
  :mod:`golden.export`); without it (the dense baseline) every element is sent, zeros included.

Input ``i``: a token of ``d_in`` int8 elements arrives as ``words`` beats of ``bitmap_word``
(``e``) elements, element ``j`` of beat ``w`` being element ``w * e + j``; ``position`` is
repeated on every beat (the encoder uses the first beat's) and ``last`` marks the final beat.

Outputs, per token:

* ``o_map``: one bitmap word per input beat (bit ``j``: element ``j`` of the beat is sent),
  ``last`` on the token's final word;
* ``o_val``: the sent values (int9) in element order, ``decode_width`` (``k``) per beat,
  packed across words, the final beat zero padded and marked ``last``; a token with nothing
  to send has no value beat. ``o_map`` and ``o_val`` are exactly the bitmap decoder's input
  format (:func:`golden.blocks.bitmap_token_streams`);
* ``o_tok``: one beat ``{position, dense}``, issued together with the token's first
  ``o_map`` word (so a consumer knows the token's mode before its data).

Throughput: one input word per cycle while the words have at most ``k`` sent values each
(whatever the carry of values from earlier words), ``ceil(n / k)`` cycles for a word with
``n > k`` sent values, plus one cycle at the end of a token whose last word leaves more than
``k`` values to send (carry included: its last two value beats cannot leave in one cycle).
A full value beat leaves only once it is known not to be the token's last: more values follow
in its word or in the next word (one word of look-ahead into stage 1c), or the token ends; if
the input starves mid-token the beat waits in the carry. Pipeline: input and reference read;
delta, threshold and reference write-back; the word's bitmap and values registered (stage 1b,
a register slice); its sent values compacted and counted (stage 1c, a register slice;
``o_map`` FIFO, ``o_tok``); value packer (``o_val``). ``o_tok`` and ``o_val`` are
valid/ready registers; ``o_map`` leaves a FIFO deep enough for a whole token, so that values
still waiting for later words of their token never deadlock a consumer that wants a word's
values before it takes more words (the bitmap decoder holds two words). Latency is 4 cycles
from an input beat to its ``o_map`` word and 5 to its first value beat.

``clear_refs`` (a pulse) clears every ``has_ref`` bit in the cycle it is high, before any
beat taken in that cycle: no input gating. A token whose first beat is taken in or after that
cycle is dense; a token already started finishes in the mode it started with.

Framing errors set the sticky ``error`` flag (cleared by reset or a ``clear_error`` pulse).
The encoder counts the beats of each token against ``words`` (values outside ``1 .. W``,
``W = ceil(max_reduction / e)``, act as the nearest of the two) and resynchronises without
hanging and without emitting a malformed stream:

* ``last`` before beat ``words``: that beat ends the token (``o_map`` ``last`` on it, values
  closed); the token is shorter but well formed;
* beat ``words`` (1-based) without ``last``: it ends the token as if it had ``last``, and the
  following input beats are taken and dropped up to and including the next one with ``last``;
* in both cases ``has_ref`` of the token's position is cleared (its reference was not rebuilt
  consistently), so the next token at that position is dense.

Positions must be below ``max_positions``.
"""

from amaranth.hdl import C, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith, bitpick
from hw.bitmap_decoder import bitmap_map_layout, bitmap_value_layout
from hw.config import RTSAConfig
from hw.memories import absent_ports
from hw.register_slice import RegisterSlice

__all__ = ["token_layout", "token_info_layout", "DeltaEncoder"]


def token_layout(config):
    """One input beat: ``bitmap_word`` int8 elements of a token."""
    return data.StructLayout({
        "data":     data.ArrayLayout(arith.shape_of(contract.ACT), config.bitmap_word),
        "position": unsigned(config.position_bits),
        "last":     1,
    })


def token_info_layout(config):
    """One ``o_tok`` beat: the token's position and whether it is dense."""
    return data.StructLayout({"position": unsigned(config.position_bits), "dense": 1})


class DeltaEncoder(wiring.Component):
    """Inter-frame delta encoder of a linear layer: tokens -> bitmap + packed values.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``bitmap_word`` (elements per beat), ``decode_width`` (values per value beat),
        ``max_reduction`` (longest token), ``max_positions`` (reference slots).
    max_in : int or None
        The longest token this encoder takes (default ``max_reduction``): it sizes the
        references, ``max_positions x max_in`` int8.
    refs : bool
        False for a dense-only encoder (the embedding's, the classifier's): no reference
        memory, every token dense whatever ``delta_enable`` says.

    Attributes
    ----------
    i : ``In(stream.Signature(token_layout(config)))``
    o_map : ``Out(stream.Signature(bitmap_map_layout(config)))``
    o_val : ``Out(stream.Signature(bitmap_value_layout(config)))``
    o_tok : ``Out(stream.Signature(token_info_layout(config)))``
    words : ``In(range(W + 1))``
        Beats per token (``d_in / bitmap_word``); constant during a run.
    tau : ``In(8)``
        Delta threshold: elements with ``|delta| <= tau`` are not sent.
    delta_enable : ``In(1)``
        0: every token is dense and sends every element (the dense baseline).
    clear_refs : ``In(1)``
        Pulse: forget every reference (one cycle, see the module documentation).
    clear_error : ``In(1)``
        Pulse: clear ``error``.
    error : ``Out(1)``
        Sticky: a token's beat count disagreed with ``words``.
    """

    def __init__(self, config, *, max_in=None, refs=True):
        if not isinstance(config, RTSAConfig):
            raise TypeError("config must be an RTSAConfig, not {!r}".format(config))
        max_in = config.max_reduction if max_in is None else max_in
        if (not isinstance(max_in, int) or isinstance(max_in, bool)
                or not 1 <= max_in <= config.max_reduction):
            raise ValueError("max_in must be an integer in 1 .. {}, not {!r}"
                             .format(config.max_reduction, max_in))
        self._config = config
        self._refs = bool(refs)
        self._max_words = contract.bitmap_words(max_in, config.bitmap_word)
        super().__init__({
            "i":           In(stream.Signature(token_layout(config))),
            "o_map":       Out(stream.Signature(bitmap_map_layout(config))),
            "o_val":       Out(stream.Signature(bitmap_value_layout(config))),
            "o_tok":       Out(stream.Signature(token_info_layout(config))),
            "words":       In(range(self._max_words + 1)),
            "tau":         In(8),
            "delta_enable": In(1),
            "clear_refs":  In(1),
            "clear_error": In(1),
            "error":       Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        e, W = cfg.bitmap_word, self._max_words
        act = arith.shape_of(contract.ACT)
        op = arith.shape_of(cfg.operand_format)
        i = self.i
        beat = i.payload

        # Reference vectors, one word of e elements per (position, word index). The read of a
        # word may meet the write-back of the same word by the previous token at that position
        # (one-word tokens back to back): the read port is transparent for that.
        word, depth = data.ArrayLayout(act, e), cfg.max_positions * W
        if self._refs:
            m.submodules.refs = refs = Memory(shape=word, depth=depth, init=[])
            wr = refs.write_port()
            rd = refs.read_port(transparent_for=(wr,))
            delta_enable = self.delta_enable
        else:
            # Dense only: no token is a delta token.
            rd, wr = absent_ports(word, depth, "refs")
            delta_enable = C(0, 1)
        has_ref = Signal(cfg.max_positions)

        # --- Stage 0: take a beat, frame it, read its reference word. ---------------------
        widx = Signal(range(W))             # word index of the next beat taken
        dropping = Signal()                 # dropping the surplus beats of an over-long token
        tok_pos = Signal(cfg.position_bits)
        tok_dense, tok_all = Signal(), Signal()
        first = widx == 0
        # The final beat by the framing; words is clamped to 1..W so that a token never
        # leaves its slot of the reference memory.
        final = (widx + 1 >= self.words) | (widx == W - 1)
        pos = Mux(first, beat.position, tok_pos)
        dense_now = Signal()
        all_now = Signal()
        m.d.comb += [
            dense_now.eq(Mux(first, ~delta_enable | ~has_ref.bit_select(pos, 1)
                             | self.clear_refs, tok_dense)),
            all_now.eq(Mux(first, ~delta_enable, tok_all)),
        ]

        s1_valid, s1_last, s1_first, s1_dense, s1_all = (Signal(name=f"s1_{n}") for n in
                                                          ("valid", "last", "first", "dense",
                                                           "all"))
        s1_x = Signal(data.ArrayLayout(act, e))
        # |x - r| > tau  <=>  r <= x - tau - 1  or  r >= x + tau + 1: the bounds are computed
        # from the beat as it is taken, so that stage 1 compares the reference as it leaves the
        # block RAM (the ULX3S's slowest path was the RAM's output through the subtract and
        # then the compare).
        bound = signed(max(act.width, len(self.tau)) + 2)      # x - tau - 1 .. x + tau + 1
        s1_lo = Signal(data.ArrayLayout(bound, e))
        s1_hi = Signal(data.ArrayLayout(bound, e))
        s1_pos = Signal(cfg.position_bits)
        s1_addr = Signal.like(rd.addr)
        s1_adv = Signal()                   # stage 1 hands its word on this cycle
        take = Signal()
        m.d.comb += [
            i.ready.eq(dropping | ~s1_valid | s1_adv),
            take.eq(i.valid & i.ready & ~dropping),
            rd.addr.eq(pos * W + widx),
            # Read only when a beat is taken, so the data stays put while stage 1 stalls.
            rd.en.eq(take),
        ]
        bad = take & (beat.last != final)
        with m.If(s1_adv):
            m.d.sync += s1_valid.eq(0)
        with m.If(take):
            m.d.sync += [s1_lo[j].eq(beat.data[j] - self.tau - 1) for j in range(e)]
            m.d.sync += [s1_hi[j].eq(beat.data[j] + self.tau + 1) for j in range(e)]
            m.d.sync += [s1_valid.eq(1), s1_x.eq(beat.data), s1_last.eq(final | beat.last),
                         s1_first.eq(first), s1_pos.eq(pos), s1_dense.eq(dense_now),
                         s1_all.eq(all_now), s1_addr.eq(rd.addr),
                         widx.eq(Mux(final | beat.last, 0, widx + 1))]
            with m.If(first):
                m.d.sync += [tok_pos.eq(beat.position), tok_dense.eq(dense_now),
                             tok_all.eq(all_now)]
            with m.If(final & ~beat.last):
                m.d.sync += dropping.eq(1)
        with m.If(dropping & i.valid & beat.last):
            m.d.sync += dropping.eq(0)

        # Later assignments win: clear_refs acts before a set by a beat taken in its cycle.
        with m.If(self.clear_refs):
            m.d.sync += has_ref.eq(0)
        with m.If(take & first):
            m.d.sync += has_ref.bit_select(pos, 1).eq(1)
        with m.If(bad):
            m.d.sync += has_ref.bit_select(pos, 1).eq(0)

        with m.If(self.clear_error):
            m.d.sync += self.error.eq(0)
        with m.If(bad):
            m.d.sync += self.error.eq(1)

        # --- Stage 1: delta, threshold, reference write-back. ------------------------------
        x, r = s1_x, rd.data
        send = Signal(e)
        vals = Signal(data.ArrayLayout(op, e))
        new_r = Signal(data.ArrayLayout(act, e))
        for j in range(e):
            d = x[j] - r[j]
            big = (r[j] <= s1_lo[j]) | (r[j] >= s1_hi[j])
            sent = Mux(s1_dense, s1_all | (x[j] != 0), big)
            m.d.comb += [
                send[j].eq(sent),
                vals[j].eq(Mux(s1_dense, x[j], d)),
                # r + delta~ is x where sent and r elsewhere; a dense token stores x.
                new_r[j].eq(Mux(s1_dense | sent, x[j], r[j])),
            ]

        self._hand_on(m, s1_valid=s1_valid, s1_adv=s1_adv, first=s1_first, last=s1_last,
                      dense=s1_dense, position=s1_pos, send=send, vals=vals)
        m.d.comb += [wr.en.eq(s1_adv), wr.addr.eq(s1_addr), wr.data.eq(new_r)]
        return m

    def _hand_on(self, m, *, s1_valid, s1_adv, first, last, dense, position, send, vals):
        """Stage 1b and the packer: stage 1's word (``send``, ``vals`` and its token's
        ``first``, ``last``, ``dense``, ``position``) into registers, then into the bitmap
        FIFO, ``o_tok`` and the value packer; drives ``s1_adv`` (stage 1 hands its word on)."""
        cfg = self._config
        e, W = cfg.bitmap_word, self._max_words
        op = arith.shape_of(cfg.operand_format)
        o_map, o_tok = self.o_map, self.o_tok
        # --- Stage 1b: the word's bitmap and values, in a register slice. ----------------
        # Stage 1 writes the reference back and hands its word on whenever the slice has
        # room; what follows (the bitmap FIFO, o_tok and the packer, whose look-ahead asks
        # whether the next word sends anything) sees registers, not the block RAM's output:
        # through the packer into stage 1's advance and the input's ready, that output was
        # the ULX3S's slowest path (31.8 ns estimated by boards.timing, 26 MHz placed). The
        # slice's ready is a register too, so the packer's decision no longer reaches stage 1,
        # the input's ready and whatever feeds the input (the link executor: 27.6 ns
        # estimated with a plain register here, 35.6 MHz placed).
        word_fields = {"first": 1, "last": 1, "dense": 1,
                       "position": unsigned(cfg.position_bits), "send": e}
        m.submodules.s1b = s1b = RegisterSlice(data.StructLayout({
            **word_fields, "vals": data.ArrayLayout(op, e)}))
        m.d.comb += [s1b.i.valid.eq(s1_valid), s1_adv.eq(s1_valid & s1b.i.ready),
                     s1b.i.payload.first.eq(first), s1b.i.payload.last.eq(last),
                     s1b.i.payload.dense.eq(dense), s1b.i.payload.position.eq(position),
                     s1b.i.payload.send.eq(send), s1b.i.payload.vals.eq(vals)]
        # --- Stage 1c: the word's sent values compacted (lowest first) and counted, in a
        # second slice. Computed between stage 1b's registers and stage 2's load, the
        # compaction sat behind the packer's decision to load (ABC merged the two): 22.4 ns
        # by boards.timing on the ULX3S run-through, the design's slowest path.
        m.submodules.s1c = s1c = RegisterSlice(data.StructLayout({
            **word_fields, "cnt": range(e + 1), "vals": data.ArrayLayout(op, e)}))
        b = s1b.o.payload
        packed, sent = bitpick.compact(m, b.send, [b.vals[j] for j in range(e)], name="sent")
        m.d.comb += [s1c.i.valid.eq(s1b.o.valid), s1b.o.ready.eq(s1c.i.ready),
                     s1c.i.payload.cnt.eq(sent)]
        m.d.comb += [s1c.i.payload[f].eq(b[f]) for f in word_fields]
        m.d.comb += [s1c.i.payload.vals[j].eq(v) for j, v in enumerate(packed)]
        sb = s1c.o.payload
        sb_adv = Signal()

        s2_valid, s2_final, s2_done = Signal(), Signal(), Signal()
        s2_cnt = Signal(range(e + 1))       # the word's sent values not packed yet
        s2_vals = Signal(data.ArrayLayout(op, e))   # they, lowest first (compacted), zeros after
        # Bitmap words leave through a FIFO that holds a whole token. A token's values may
        # wait in the packer's carry for its later words, while a consumer (the bitmap
        # decoder) may refuse more words until it has the values of the ones it holds: with
        # room for all of a token's words the encoder never waits on such a consumer.
        m.submodules.map_fifo = map_fifo = fifo.SyncFIFOBuffered(
            width=len(o_map.payload.as_value()), depth=W + 1)
        m.d.comb += [o_map.valid.eq(map_fifo.r_rdy), o_map.payload.eq(map_fifo.r_data),
                     map_fifo.r_en.eq(o_map.ready)]
        map_word = Signal.like(o_map.payload)
        m.d.comb += [map_word.word.eq(sb.send), map_word.last.eq(sb.last),
                     map_fifo.w_data.eq(map_word), map_fifo.w_en.eq(sb_adv)]
        map_free = map_fifo.w_rdy
        tok_free = ~o_tok.valid | o_tok.ready
        m.d.comb += [sb_adv.eq(s1c.o.valid & (~s2_valid | s2_done) & map_free
                               & (~sb.first | tok_free)),
                     s1c.o.ready.eq(sb_adv)]
        with m.If(o_tok.valid & o_tok.ready):
            m.d.sync += o_tok.valid.eq(0)
        with m.If(s2_done):
            m.d.sync += s2_valid.eq(0)
        with m.If(sb_adv):
            m.d.sync += [s2_valid.eq(1), s2_cnt.eq(sb.cnt), s2_final.eq(sb.last),
                         s2_vals.eq(sb.vals)]
            with m.If(sb.first):
                m.d.sync += [o_tok.valid.eq(1), o_tok.payload.position.eq(sb.position),
                             o_tok.payload.dense.eq(sb.dense)]

        # --- Stage 2: pack up to k values per cycle behind a carry of up to k. ------------
        # Stage 1c's output holds the next word of the same token whenever this word is not
        # the last and stage 1 kept up.
        self._pack(m, valid=s2_valid, final=s2_final, done=s2_done, cnt=s2_cnt, vals=s2_vals,
                   ahead=s1c.o.valid & (sb.cnt != 0))

    def _pack(self, m, *, valid, final, done, cnt, vals, ahead):
        """Stage 2, the value packer: up to ``k`` values a cycle into ``o_val`` beats.

        A full beat can leave only once it is known whether it is the token's last: when
        more values follow in this word or (one word of look-ahead, ``ahead``) in the word
        waiting in stage 1c, or when the token ends. Otherwise it waits in the carry.
        ``valid``, ``final`` (the token's last word), ``cnt`` (its sent values not packed yet)
        and ``vals`` (they, compacted: the next ``k`` are ``vals[0 .. k - 1]``, zeros after
        ``cnt``) are the stage's registers; ``done`` is driven here (the word is finished this
        cycle). Each cycle takes ``vals[0 .. k - 1]`` and shifts the rest down by ``k``: the
        packer picked them with :func:`hw.bitpick.pick_lowest` before, whose ``k`` clears in
        series were the encoder's slowest path.
        """
        k, e = self._config.decode_width, self._config.bitmap_word
        op = arith.shape_of(self._config.operand_format)
        o_val = self.o_val
        carry = Signal(data.ArrayLayout(op, k))
        ccnt = Signal(range(k + 1))
        picked = [vals[j] for j in range(k)]    # zero past cnt: the padding of a beat
        n = Signal(range(k + 1))
        total = Signal(range(2 * k + 1))
        last_pick = cnt <= k                # this cycle takes the word's last values
        m.d.comb += [n.eq(Mux(last_pick, cnt, k)), total.eq(ccnt + n)]
        # Carried values first, then this cycle's picks; slots past total are zero.
        slots = [Signal(op, name=f"slot_{j}") for j in range(2 * k)]
        with m.Switch(ccnt):
            for c in range(k + 1):
                with m.Case(c):
                    for j, slot in enumerate(slots):
                        src = carry[j] if j < c else picked[j - c] if j - c < k else 0
                        m.d.comb += slot.eq(src)

        tok_end = final & last_pick
        full = (total > k) | ((total == k) & (~last_pick | tok_end | ahead))
        # A token end with more than k values left needs one more cycle for its last beat.
        spill = tok_end & (total > k)
        emit = valid & (full | (tok_end & (total != 0)))
        go = valid & (~emit | ~o_val.valid | o_val.ready)
        m.d.comb += done.eq(go & last_pick & ~spill)
        with m.If(o_val.valid & o_val.ready):
            m.d.sync += o_val.valid.eq(0)
        with m.If(go & ~done):     # a done word makes room for stage 1's next one
            m.d.sync += [vals[j].eq(vals[j + k] if j + k < e else 0) for j in range(e)]
            m.d.sync += cnt.eq(cnt - n)
        with m.If(go):
            with m.If(full):
                m.d.sync += ccnt.eq(total - k)
                m.d.sync += [carry[j].eq(slots[k + j]) for j in range(k)]
            with m.Elif(tok_end):
                m.d.sync += ccnt.eq(0)
            with m.Else():
                m.d.sync += ccnt.eq(total)
                m.d.sync += [carry[j].eq(slots[j]) for j in range(k)]
            with m.If(emit):
                m.d.sync += [o_val.valid.eq(1), o_val.payload.last.eq(tok_end & ~spill)]
                m.d.sync += [o_val.payload.values[j].eq(slots[j]) for j in range(k)]
        return m
