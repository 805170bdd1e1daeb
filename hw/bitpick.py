"""Picking the lowest set bits of a bitmap, one per output slot.

The bitmap decoder (``k`` element indices per bitmap word), the delta encoder's value packer
(``k`` sent elements per word) and the sub-vector decoder (one kept sub-vector per cycle) all
take the lowest set bits of a word, lowest first, and keep the rest for the next cycle. They
share :func:`pick_lowest`.

Depth: slot ``j`` sees the word after ``j`` clears of its lowest set bit (``x & (x - 1)``, one
subtraction each) and finds the bit's position with a balanced tree
(:func:`lowest_set_index`, ``ceil_log2(len(bits))`` levels of 2-input muxes) rather than a
priority chain as long as the word: the sub-vector decoder of the attention engine picks from a
``max_tokens``-bit mask (512 bits in the ``vidt`` preset). Measured on that decoder alone: with
a chain, the longest path after Yosys' ``synth -noabc`` is 512 cells and ``synth_ecp5 -abc9``
fails with "call stack exhausted"; with the tree, 50 cells, and ``synth_ecp5 -abc9`` completes.
The tree computes the same function as the chain (checked formally with Yosys' ``equiv_*``
passes on the three blocks).
"""

from functools import reduce

from amaranth.hdl import Cat, Const, Mux, Signal, Value

from hw.arith import sum_tree

__all__ = ["lowest_set_index", "pick_lowest", "compact", "at_most"]


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("{} must be a positive integer, not {!r}".format(name, value))


def lowest_set_index(m, bits, *, name):
    """Position of the lowest set bit of ``bits`` (0 when none is set), by a balanced tree.

    Each level pairs neighbouring nodes: a node's "some bit set" flag is the OR of its two
    children's (kept in a signal ``{name}_any{level}`` per level, since three places use each
    flag), its index is the lower child's when that has a set bit and the upper child's
    otherwise, with one more bit saying which. An empty word yields index 0 at every level.

    Returns a value ``ceil_log2(len(bits))`` bits wide (0 bits for a 1-bit ``bits``).
    """
    bits = Value.cast(bits)
    _positive("Width of bits", len(bits))
    anys = [bits[b] for b in range(len(bits))]
    indexes = [None] * len(bits)            # None: a 0-bit index (a single bit)
    level = 0
    while len(anys) > 1:
        level += 1
        next_anys, next_indexes = [], []
        for lo in range(0, len(anys), 2):
            if lo + 1 == len(anys):         # the odd node out moves up a level unchanged
                next_anys.append(anys[lo])
                next_indexes.append(Const(0, level) if indexes[lo] is None
                                    else Cat(indexes[lo], Const(0, 1)))
                continue
            any_lo, any_hi = anys[lo], anys[lo + 1]
            upper = ~any_lo & any_hi        # the lowest set bit is in the upper child
            if indexes[lo] is None:
                next_indexes.append(upper)
            else:
                # The upper child's index is 0 when it is empty, so an empty node gives 0.
                next_indexes.append(Cat(Mux(any_lo, indexes[lo], indexes[lo + 1]), upper))
            next_anys.append(any_lo | any_hi)
        if len(next_anys) > 1:
            flags = Signal(len(next_anys), name="{}_any{}".format(name, level))
            m.d.comb += flags.eq(Cat(next_anys))
            next_anys = [flags[i] for i in range(len(next_anys))]
        anys, indexes = next_anys, next_indexes
    return Const(0, 0) if indexes[0] is None else indexes[0]


def pick_lowest(m, bits, count, *, name):
    """The ``count`` lowest set bits of ``bits``, one per output slot, lowest first.

    Parameters
    ----------
    m : :class:`amaranth.hdl.Module`
        Receives the combinational logic.
    bits : value
        The bitmap (bit ``b`` set: element ``b`` is to be picked).
    count : int
        Output slots (``>= 1``).
    name : str
        Slot ``j``'s position is the signal ``{name}_{j}``; the word slot ``j > 0`` picks
        from (``bits`` less the ``j`` lower picks) is ``{name}_word_{j}``.

    Returns
    -------
    (list of Signal, list of Value, Value)
        ``index[j]``: position of the ``j``-th lowest set bit (``range(len(bits))``, 0 when
        ``bits`` has ``j`` set bits or fewer); ``present[j]``: 1 when that bit exists;
        ``rest``: ``bits`` with the picked bits cleared (an expression wider than ``bits``
        whose extra bits are zero).
    """
    bits = Value.cast(bits)
    _positive("count", count)
    width = len(bits)
    index, present = [], []
    word, rest = bits, bits
    for j in range(count):
        if j or not isinstance(bits, Signal):
            # A signal per slot, so that the tree's many slices do not copy the expression.
            word = Signal(width, name="{}_word_{}".format(name, j))
            m.d.comb += word.eq(rest)
        p = Signal(range(width), name="{}_{}".format(name, j))
        m.d.comb += p.eq(lowest_set_index(m, word, name="{}_{}".format(name, j)))
        index.append(p)
        present.append(word != 0)
        rest = word & (word - 1)            # clear the lowest set bit
    return index, present, rest


def compact(m, bits, values, *, name):
    """The ``values`` at the set bits of ``bits``, packed lowest first, zeros after.

    Slot ``c`` holds ``values[b]`` for the set bit ``b`` with ``c`` set bits below it: every
    bit's count of lower set bits is a sum tree of its own, and each slot ORs the values whose
    count matches, so the depth grows with ``log2(len(bits))``, not with the slots. The delta
    encoder's value packer took ``k`` values a cycle through :func:`pick_lowest` (``k``
    lowest-bit clears in series, then a ``len(bits)``-way mux), which was its slowest path
    (22.4 ns by :mod:`boards.timing` on the ULX3S run-through); compacted once per word, the
    packer only shifts.

    Parameters
    ----------
    bits : value
        ``n`` bits.
    values : sequence of ``n`` values of one shape
    name : str
        Slot ``c`` is the signal ``{name}_{c}``.

    Returns
    -------
    (list of Signal, Value)
        ``n`` slots, of the shape of ``values[0]``, and the number of set bits (the last
        bit's count of lower set bits plus the bit: no second tree).
    """
    bits = Value.cast(bits)
    n = len(bits)
    if len(values) != n:
        raise ValueError("values must have one entry per bit ({}), not {!r}"
                         .format(n, len(values)))
    shape = Value.cast(values[0]).shape()
    below = []
    for b in range(n):
        count = Signal(range(b + 1), name="{}_below_{}".format(name, b))
        m.d.comb += count.eq(sum_tree(bits[i] for i in range(b)) if b else 0)
        below.append(count)
    slots = []
    for c in range(n):
        slot = Signal(shape, name="{}_{}".format(name, c))
        terms = [Mux(bits[b] & (below[b] == c), Value.cast(values[b]).as_unsigned(), 0)
                 for b in range(c, n)]
        m.d.comb += slot.eq(reduce(lambda a, b: a | b, terms))
        slots.append(slot)
    return slots, below[-1] + bits[-1]


def at_most(m, bits, count, *, name):
    """1 when ``bits`` has at most ``count`` set bits.

    A balanced tree of thermometer counts: each node holds ``ge[t]`` ("``t`` or more bits
    set") for ``t = 1 .. count + 1``, and a parent's ``ge[t]`` is the OR over ``i`` of its
    children's ``ge[i] & ge[t - i]`` (``ge[0]`` being 1): plain logic, a LUT level or two per
    tree level, no adders. :func:`pick_lowest`'s ``rest == 0`` on a 392-bit mask is a 392-bit
    carry chain and a 392-bit compare, which were the sub-vector decoder's slowest path (20.0
    ns by :mod:`boards.timing` on the ULX3S run-through). On the decoder synthesised alone
    the estimate is 17.9 ns with this tree (18.1 with saturating adders per node): for
    ``count`` 2 a node's flags take two LUT levels, so a 392-bit tree is still deep.
    """
    bits = Value.cast(bits)
    _positive("Width of bits", len(bits))
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError("count must be a non-negative integer, not {!r}".format(count))
    top = count + 1
    # A leaf: ge[1] is the bit, ge[t > 1] is 0.
    nodes = [[bits[b]] + [Const(0, 1)] * (top - 1) for b in range(len(bits))]
    level = 0
    while len(nodes) > 1:
        level += 1
        nxt = []
        for lo in range(0, len(nodes), 2):
            if lo + 1 == len(nodes):
                nxt.append(nodes[lo])
                continue
            a, b = ([Const(1, 1)] + n for n in (nodes[lo], nodes[lo + 1]))
            flags = Signal(top, name="{}_{}_{}".format(name, level, lo // 2))
            m.d.comb += flags.eq(Cat(*[
                reduce(lambda x, y: x | y, [a[i] & b[t - i] for i in range(t + 1)])
                for t in range(1, top + 1)]))
            nxt.append([flags[t] for t in range(top)])
        nodes = nxt
    return ~nodes[0][count]
