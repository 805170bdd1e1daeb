"""Sub-vector mask decoder: kept-sub-vector bitmaps of attention columns become work items.

For one attention head the score matrix ``S = Q K^T`` is cut, column by column (one column per
key ``j``), into sub-vectors of ``lanes`` consecutive query rows (row block ``b``). The input
carries one beat per column: the bitmask of the kept row blocks (bit ``b``), ``last`` on the
head's final column. The output is one work item ``(column, block)`` per cycle, column-major and
block-ascending, with ``col_last`` on a column's final item and ``last`` on the head's final item.
A column with no kept sub-vector yields a single item with ``empty`` set, so the framing of
every column and head reaches the consumer.

A head with more than ``max_tokens`` columns sets the sticky ``error`` flag; its surplus columns
are dropped up to the beat marked ``last``, which still closes the head.

``order="block"`` is the transposed format, the one the attention engine schedules by (one query
block's softmax rows need all of its kept columns together): one beat per query row block, the
bitmask of its kept key columns (bit ``j``), ``last`` on the head's final block. Items are then
block-major and column-ascending; ``col_last`` marks a block's final item (in general: the last
item of its input beat), and more than ``max_blocks`` beats per head set ``error``.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import bitpick

__all__ = ["ORDERS", "subvector_mask_layout", "subvector_item_layout", "SubvectorDecoder"]

#: Mask formats: ``column`` (a beat per key column, bits = query blocks) and ``block`` (a beat
#: per query block, bits = key columns).
ORDERS = ("column", "block")


def _geometry(config, order):
    """(bits of a mask beat, beats per head) of a mask format."""
    if order not in ORDERS:
        raise ValueError("Mask order must be one of {}, not {!r}".format(", ".join(ORDERS), order))
    if order == "column":
        return config.max_blocks, config.max_tokens
    return config.max_tokens, config.max_blocks


def subvector_mask_layout(config, order="column"):
    return data.StructLayout({"mask": unsigned(_geometry(config, order)[0]), "last": 1})


def subvector_item_layout(config):
    return data.StructLayout({
        "column":   unsigned(config.column_bits),
        "block":    unsigned(config.block_bits),
        "empty":    1,
        "col_last": 1,
        "last":     1,
    })


class SubvectorDecoder(wiring.Component):
    """Kept-sub-vector column bitmaps -> ordered (column, row block) work items.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    order : {"column", "block"}
        Mask format (see the module docstring).
    clearable : bool
        Add the ``clear_error`` input (an engine's CLEAR_ERROR); without it only reset clears
        ``error``.

    Attributes
    ----------
    i : ``In(stream.Signature(subvector_mask_layout(config, order)))``
    o : ``Out(stream.Signature(subvector_item_layout(config)))``
    error : ``Out(1)``
        Sticky: a head had more beats than its format allows.
    clear_error : ``In(1)`` (``clearable`` only)
        Clears ``error`` (an error in the same cycle wins).
    """

    def __init__(self, config, *, order="column", clearable=False):
        self._config = config
        self._order = order
        self._clearable = bool(clearable)
        _geometry(config, order)
        super().__init__({
            "i": In(stream.Signature(subvector_mask_layout(config, order))),
            "o": Out(stream.Signature(subvector_item_layout(config))),
            "error": Out(1),
            **({"clear_error": In(1)} if clearable else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nb, lines = _geometry(cfg, self._order)
        o = self.o
        # ``cur_col`` numbers the input beats, ``block`` the set bits (names of column order).
        beat_field, bit_field = (("column", "block") if self._order == "column"
                                 else ("block", "column"))

        cur_valid, cur_last, cur_fresh, cur_drop = Signal(), Signal(), Signal(), Signal()
        cur_mask = Signal(nb)
        cur_col = Signal(range(lines))
        next_col = Signal(range(lines + 1))

        (block,), _, rest = bitpick.pick_lowest(m, cur_mask, 1, name="block")
        rem = Signal(nb)
        m.d.comb += rem.eq(rest)            # lowest set bit cleared
        # rem == 0, kept in a register: at most one bit left. Taken from rem, the column's
        # end (and so the input's ready and the mask's load) waited on a carry chain and a
        # compare as wide as the mask: 20.0 ns by boards.timing for 392 columns.
        cur_single = Signal()

        out_free = ~o.valid | o.ready
        emit = Signal()
        done = Signal()
        with m.If(cur_valid & out_free):
            with m.If(cur_drop):
                # A surplus column: nothing to emit unless it closes the head.
                m.d.comb += [done.eq(1), emit.eq(cur_last)]
            with m.Else():
                m.d.comb += [emit.eq(1), done.eq(cur_single)]

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(emit):
            empty = cur_drop | (cur_fresh & (cur_mask == 0))
            m.d.sync += [o.valid.eq(1), o.payload[beat_field].eq(cur_col),
                         o.payload[bit_field].eq(Mux(empty, 0, block)), o.payload.empty.eq(empty),
                         o.payload.col_last.eq(done), o.payload.last.eq(done & cur_last),
                         cur_mask.eq(rem), cur_fresh.eq(0),
                         cur_single.eq(bitpick.at_most(m, cur_mask, 2, name="two"))]

        if self._clearable:
            with m.If(self.clear_error):
                m.d.sync += self.error.eq(0)
        # A column is taken as soon as the previous one has left (one item per cycle).
        m.d.comb += self.i.ready.eq(~cur_valid | done)
        with m.If(self.i.ready):
            m.d.sync += cur_valid.eq(self.i.valid)
            with m.If(self.i.valid):
                overflow = next_col == lines
                m.d.sync += [cur_mask.eq(self.i.payload.mask), cur_last.eq(self.i.payload.last),
                             cur_single.eq(bitpick.at_most(m, self.i.payload.mask, 1,
                                                           name="one")),
                             cur_fresh.eq(1), cur_drop.eq(overflow),
                             cur_col.eq(Mux(overflow, lines - 1, next_col)),
                             next_col.eq(Mux(self.i.payload.last, 0,
                                             Mux(overflow, next_col, next_col + 1)))]
                with m.If(overflow):
                    m.d.sync += self.error.eq(1)
        return m
