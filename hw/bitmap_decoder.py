"""Bitmap decoder: a token's delta bitmap and packed nonzero values become (index, value) pairs.

Input format (the contract's sparse stream format, :mod:`golden.contract`): the bitmap of a token
arrives on ``i_map`` as ``ceil(d / bitmap_word)`` words, LSB first, ``last`` on the final word;
its nonzero values arrive on ``i_val`` in element order, ``decode_width`` (``k``) per beat, the
last beat zero padded and marked ``last``; a token with an empty bitmap sends no value beat.

Output: beats of up to ``k`` pairs (``count`` valid entries, packed from entry 0), never spanning
two bitmap words; the final beat of a token has ``last`` set, and a token with no nonzero
element yields one beat with ``count == 0`` and ``last``, so the consumer always sees every token.

Malformed input sets the sticky ``error`` flag and the decoder resynchronises at the next token
boundary instead of hanging or swallowing the next token:

* the value stream ends (``last``) before the bitmap runs out of set bits: the rest of the
  token's bitmap is dropped and the token is closed;
* the bitmap ends while the token still has value beats, or the final value beat held a whole
  beat of surplus values: the surplus is dropped up to the value beat marked ``last``;
* a token has more than ``ceil(max_reduction / bitmap_word)`` bitmap words: its remaining
  words are dropped.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith, bitpick

__all__ = ["bitmap_map_layout", "bitmap_value_layout", "bitmap_pair_layout", "BitmapDecoder"]


def bitmap_map_layout(config):
    return data.StructLayout({"word": unsigned(config.bitmap_word), "last": 1})


def bitmap_value_layout(config):
    op = arith.shape_of(config.operand_format)
    return data.StructLayout({"values": data.ArrayLayout(op, config.decode_width), "last": 1})


def bitmap_pair_layout(config):
    op = arith.shape_of(config.operand_format)
    k = config.decode_width
    return data.StructLayout({
        "count": range(k + 1),
        "index": data.ArrayLayout(unsigned(config.index_bits), k),
        "value": data.ArrayLayout(op, k),
        "last":  1,
    })


class BitmapDecoder(wiring.Component):
    """Delta bitmap + packed values -> up to ``decode_width`` (index, value) pairs per cycle.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`

    Attributes
    ----------
    i_map : ``In(stream.Signature(bitmap_map_layout(config)))``
    i_val : ``In(stream.Signature(bitmap_value_layout(config)))``
    o : ``Out(stream.Signature(bitmap_pair_layout(config)))``
    error : ``Out(1)``
        Sticky: set by malformed input, cleared only by reset.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "i_map": In(stream.Signature(bitmap_map_layout(config))),
            "i_val": In(stream.Signature(bitmap_value_layout(config))),
            "o": Out(stream.Signature(bitmap_pair_layout(config))),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B, k = cfg.bitmap_word, cfg.decode_width
        max_words = contract.bitmap_words(cfg.max_reduction, B)
        op = arith.shape_of(cfg.operand_format)
        o = self.o

        # --- Bitmap words: a skid register (nxt) in front of the word being decoded (cur). --
        nxt_valid, nxt_last = Signal(), Signal()
        nxt_word = Signal(B)
        cur_valid, cur_last = Signal(), Signal()
        cur_skip = Signal()     # dropping the rest of a malformed token
        cur_word = Signal(B)
        cur_cnt = Signal(range(B + 1))  # popcount(cur_word), kept in a register
        cur_widx = Signal(range(max_words + 1))
        next_widx = Signal(range(max_words + 1))    # word index the next loaded word gets
        # --- Values of the current token: a 2k-entry buffer. ------------------------------
        vbuf = [Signal(op, name=f"vbuf_{j}") for j in range(2 * k)]
        vcnt = Signal(range(2 * k + 1))
        vlast = Signal()        # the token's last value beat is in vbuf
        tok_bits = Signal()     # the token has a set bit in an earlier word
        drop_vals = Signal()    # resynchronising: drop value beats up to one marked last
        vals_done = Signal()    # the token's values ran out early (already at a boundary)

        # Up to k lowest set bits of the current word. The picks are k lowest-bit clears in
        # series and only reach the output beat; the control (how many pairs, whether the
        # word is done) reads the count register, which was the decoder's slowest path
        # through the picks (29.9 ns by boards.timing on the ULX3S run-through).
        pos, present, rem = bitpick.pick_lowest(m, cur_word, k, name="pos")
        rem_after = Signal(B)
        n = Signal(range(k + 1))
        word_done = cur_cnt <= k
        m.d.comb += [rem_after.eq(rem), n.eq(Mux(word_done, cur_cnt, k))]

        out_free = ~o.valid | o.ready
        starved = cur_valid & ~cur_skip & (vcnt < n) & vlast          # too few values
        emit = Signal()         # a beat leaves this cycle
        consume = Signal()      # pairs of this beat are taken from cur / vbuf
        cur_done = Signal()     # cur is finished this cycle
        tok_end = Signal()      # the token closes this cycle
        with m.If(cur_valid & out_free):
            with m.If(cur_skip | starved):
                m.d.comb += [cur_done.eq(1), emit.eq(cur_last), tok_end.eq(cur_last)]
            with m.Elif(vcnt >= n):
                m.d.comb += [consume.eq(1), cur_done.eq(word_done),
                             emit.eq((n != 0) | (cur_last & word_done)),
                             tok_end.eq(cur_last & word_done)]

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(emit):
            m.d.sync += [o.valid.eq(1), o.payload.last.eq(tok_end),
                         o.payload.count.eq(Mux(consume, n, 0))]
            base = Cat(Const(0, contract.log2_exact(B)), cur_widx)
            for j in range(k):
                m.d.sync += [o.payload.index[j].eq(Mux(present[j], base + pos[j], 0)),
                             o.payload.value[j].eq(Mux(present[j], vbuf[j], 0))]

        with m.If(consume):
            m.d.sync += [cur_word.eq(rem_after), cur_cnt.eq(cur_cnt - n)]
        with m.If(cur_valid & (cur_cnt != 0)):
            with m.If(cur_done | consume):
                m.d.sync += tok_bits.eq(1)
        with m.If(starved & out_free):
            m.d.sync += self.error.eq(1)

        # --- Word intake. -----------------------------------------------------------------
        m.d.comb += self.i_map.ready.eq(~nxt_valid)
        load_word = Signal(B)
        load_last = Signal()
        loading = Signal()
        with m.If(~cur_valid | cur_done):
            with m.If(nxt_valid):
                m.d.comb += [loading.eq(1), load_word.eq(nxt_word), load_last.eq(nxt_last)]
                m.d.sync += nxt_valid.eq(0)
            with m.Elif(self.i_map.valid):
                m.d.comb += [loading.eq(1), load_word.eq(self.i_map.payload.word),
                             load_last.eq(self.i_map.payload.last)]
            m.d.sync += cur_valid.eq(loading)
        with m.Elif(self.i_map.valid & ~nxt_valid):
            m.d.sync += [nxt_valid.eq(1), nxt_word.eq(self.i_map.payload.word),
                         nxt_last.eq(self.i_map.payload.last)]
        with m.If(loading):
            too_long = next_widx == max_words
            m.d.sync += [cur_word.eq(load_word), cur_cnt.eq(arith.popcount(load_word)),
                         cur_last.eq(load_last), cur_widx.eq(next_widx),
                         next_widx.eq(Mux(load_last, 0, Mux(too_long, next_widx,
                                                              next_widx + 1)))]
            with m.If(too_long):
                m.d.sync += [self.error.eq(1), cur_skip.eq(1)]
        # Skipping lasts from an error to the end of the token.
        with m.If(starved & out_free):
            m.d.sync += [cur_skip.eq(1), vals_done.eq(1)]
        with m.If(tok_end):
            m.d.sync += [cur_skip.eq(0), vals_done.eq(0)]

        # --- Value intake. ----------------------------------------------------------------
        used = Mux(consume, n, 0)
        kept = vcnt - used
        shifted = [Signal(op, name=f"vshift_{j}") for j in range(2 * k)]
        for j in range(2 * k):
            with m.Switch(used):
                for u in range(k + 1):
                    with m.Case(u):
                        m.d.comb += shifted[j].eq(vbuf[j + u] if j + u < 2 * k else 0)
        take_val = Signal()
        wants_values = cur_valid & ~cur_skip & (tok_bits | (cur_cnt != 0))
        m.d.comb += take_val.eq(~drop_vals & ~vlast & (vcnt <= k) & wants_values & ~tok_end
                                & ~starved)
        m.d.comb += self.i_val.ready.eq(take_val | drop_vals)
        beat = self.i_val.payload
        for j in range(2 * k):
            value = shifted[j]
            for q in range(k):
                value = Mux(take_val & self.i_val.valid & (kept + q == j), beat.values[q], value)
            m.d.sync += vbuf[j].eq(value)
        m.d.sync += vcnt.eq(kept + Mux(take_val & self.i_val.valid, k, 0))
        with m.If(take_val & self.i_val.valid & beat.last):
            m.d.sync += vlast.eq(1)
        with m.If(drop_vals & self.i_val.valid & beat.last):
            m.d.sync += drop_vals.eq(0)

        # --- Token end: check that the value stream ends with the bitmap, then reset. -----
        with m.If(tok_end | starved & out_free):
            had_bits = tok_bits | (cur_cnt != 0)
            surplus = ~starved & ~vals_done & had_bits & (~vlast | (kept >= k))
            with m.If(surplus | (~had_bits & (vcnt != 0))):
                m.d.sync += self.error.eq(1)
            with m.If(~starved & ~vals_done & had_bits & ~vlast):
                m.d.sync += drop_vals.eq(1)
            m.d.sync += [vcnt.eq(0), vlast.eq(0)]
            with m.If(tok_end):
                m.d.sync += tok_bits.eq(0)
        return m
