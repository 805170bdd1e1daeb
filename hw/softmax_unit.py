"""Row-block softmax: ``lanes`` integer softmax rows side by side, bit-exact to the contract.

A *row block* is the sequence of input beats up to and including the one with ``last``; lane
``l`` of all its beats is one softmax row (one query of a sub-vector), so the ``lanes`` rows of
the block are computed in parallel. Beat ``n`` of the output holds, in lane ``l``, entry ``n`` of
:func:`golden.contract.softmax_row` of lane ``l``'s scores and kept bits, with the block's
``mult`` and ``shift``. A lane with no kept entry gives zeros.

A block goes through four phases, one at a time:

1. **Load** (``n`` cycles at full input rate): beats enter a score buffer of ``max_tokens``
   words while a per-lane running maximum over the kept entries is kept.
2. **Exponent** (``n`` cycles plus the pipeline): the buffer is read back at one word a cycle;
   per lane ``t = round_shift((max - s) * mult, shift)`` (operands, product and ``t`` each
   registered), ``e = exp2_neg(t)`` (table on the fraction, shift by the integer part), the
   per-lane sum of ``e`` is accumulated and ``e`` is written back over the score.
3. **Reciprocal**: ``floor(2**SOFTMAX_RECIP_BITS / sum)`` for every lane at once by a restoring
   divider, one quotient bit a cycle.
4. **Output** (``n`` cycles unless the consumer stalls): ``e`` is read back and leaves as
   ``PROB.saturate(round_shift(e * recip, SOFTMAX_RECIP_BITS - PROB_FRAC_BITS))``. The read
   pipeline moves only when the output register can take a beat, so back-pressure never drops
   or repeats one.

The next block is taken once the last output beat of the previous one has left. Without
stalls a block of ``n`` beats occupies the unit for :func:`occupancy` ``(n) = 3 * n +
RECIP_QUOTIENT_BITS + EXP_PIPELINE + OUT_PIPELINE`` cycles, first input beat to last output
beat (``n`` load, ``n + EXP_PIPELINE`` exponent, ``RECIP_QUOTIENT_BITS`` division, ``n +
OUT_PIPELINE`` output); the next block's first beat enters the cycle after. A block with
more than ``max_tokens`` beats sets the sticky ``error`` flag; its surplus beats are consumed
and dropped up to the one with ``last``, which still closes the block (the output then covers
the first ``max_tokens`` beats).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.cycles import SOFTMAX_EXP_PIPELINE, SOFTMAX_OUT_PIPELINE
from hw.packing import pack_layout

__all__ = ["softmax_input_layout", "softmax_output_layout", "SoftmaxUnit",
           "EXP_BITS", "RECIP_QUOTIENT_BITS", "EXP_PIPELINE", "OUT_PIPELINE", "occupancy"]

#: Bits of an ``exp2_neg`` value (:data:`hw.arith.EXP_BITS`).
EXP_BITS = arith.EXP_BITS
#: Quotient bits of the reciprocal (the divider's iterations).
RECIP_QUOTIENT_BITS = contract.SOFTMAX_RECIP_QUOTIENT_BITS
assert RECIP_QUOTIENT_BITS <= contract.SOFTMAX_RECIP_BITS
#: Cycles the exponent pass takes beyond one a word: read, operands, product, ``t``, ``e``
#: (3 before the operands and ``t`` were registered: the block RAM's output through the
#: subtract into the multiplier, and the product through the variable shift into the table,
#: were 18.7 and 19.0 ns by :mod:`boards.timing` on the ULX3S run-through). The cycle model
#: holds the figures (:mod:`hw.cycles`), this unit takes them from there.
EXP_PIPELINE = SOFTMAX_EXP_PIPELINE
#: Cycles the output pass takes beyond one a word: read, operands, product, output register.
OUT_PIPELINE = SOFTMAX_OUT_PIPELINE


def occupancy(n):
    """Cycles a block of ``n`` beats holds the unit without stalls, first input beat to last
    output beat."""
    return 3 * n + RECIP_QUOTIENT_BITS + EXP_PIPELINE + OUT_PIPELINE


def softmax_input_layout(config):
    """Layout of one input beat: entry ``n`` of every lane's row."""
    return data.StructLayout({
        "score": data.ArrayLayout(arith.shape_of(config.acc_format), config.lanes),
        "kept":  unsigned(config.lanes),   # bit l: lane l's entry takes part
        "last":  1,                        # final beat of a row block
    })


def softmax_output_layout(config):
    """Layout of one output beat: entry ``n`` of every lane's probabilities."""
    return data.StructLayout({
        "prob": data.ArrayLayout(arith.shape_of(contract.PROB), config.lanes),
        "last": 1,
    })


class _Phase(enum.Enum, shape=2):
    LOAD = 0
    EXP = 1
    DIV = 2
    OUT = 3


class SoftmaxUnit(wiring.Component):
    """Integer softmax of ``lanes`` rows at once, one row entry per lane and beat.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``lanes`` (rows per block), ``max_tokens`` (longest row, buffer depth) and the
        accumulator format of the scores.

    Attributes
    ----------
    i : ``In(stream.Signature(softmax_input_layout(config)))``
        Score beats; a block ends with ``last``.
    o : ``Out(stream.Signature(softmax_output_layout(config)))``
        Probability beats, as many as the block had (at most ``max_tokens``), ``last`` on the
        final one.
    mult : ``In(arith.shape_of(contract.REQ_MULT))``
        Exponent multiplier of :func:`golden.contract.softmax_row`, latched at the first beat
        of a block.
    shift : ``In(arith.shape_of(contract.REQ_SHIFT))``
        Exponent shift, latched at the first beat of a block.
    busy : ``Out(1)``
        A block is inside the unit.
    error : ``Out(1)``
        Sticky: a block had more than ``max_tokens`` beats.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(softmax_input_layout(config))),
            "o": Out(stream.Signature(softmax_output_layout(config))),
            "mult": In(arith.shape_of(contract.REQ_MULT)),
            "shift": In(arith.shape_of(contract.REQ_SHIFT)),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, N = cfg.lanes, cfg.max_tokens
        acc_fmt = cfg.acc_format
        A = acc_fmt.bits
        acc_shape = arith.shape_of(acc_fmt)
        # e is written back over its score, as a non-negative value of the score's format.
        assert EXP_BITS < A, "exp2 values do not fit the score buffer"
        sum_bits = (N * contract.EXP2_LUT[0]).bit_length()
        K = RECIP_QUOTIENT_BITS
        # One multiplier per lane serves both (max - s) * mult and e * recip.
        mul_a_bits = max(A, EXP_BITS)
        mul_b_bits = max(contract.REQ_MULT.bits, K)

        inp, o = self.i.payload, self.o

        word_layout = data.StructLayout({
            "value": data.ArrayLayout(acc_shape, V),   # score (phase 1), then e (phase 2)
            "kept":  unsigned(V),
        })
        m.submodules.buf = buf = Memory(shape=word_layout, depth=N, init=[])
        wp = buf.write_port()
        rp = buf.read_port(transparent_for=())

        phase = Signal(_Phase)
        count = Signal(range(N + 1))       # beats stored; the block length from phase 2 on
        rd_addr = Signal(range(N + 1))     # next word to read (phases 2 and 4)
        mult = Signal.like(self.mult)
        shift = Signal.like(self.shift)
        top = [Signal(acc_shape, name=f"max_{l}") for l in range(V)]
        have = Signal(V)                   # lane l has a kept entry (its sum is nonzero)
        total = [Signal(sum_bits, name=f"sum_{l}") for l in range(V)]
        rem = [Signal(sum_bits + 1, name=f"rem_{l}") for l in range(V)]
        quo = [Signal(K, name=f"recip_{l}") for l in range(V)]
        div_step = Signal(range(K))

        m.d.comb += self.busy.eq((phase != _Phase.LOAD) | (count != 0))

        # --- Phase 1: load. --------------------------------------------------------------
        m.d.comb += self.i.ready.eq(phase == _Phase.LOAD)
        accept = self.i.valid & self.i.ready
        surplus = count == N
        with m.If(accept):
            with m.If(count == 0):
                m.d.sync += [mult.eq(self.mult), shift.eq(self.shift)]
            with m.If(surplus):
                m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += count.eq(count + 1)
                for l in range(V):
                    s = inp.score[l]
                    with m.If(inp.kept[l] & (~have[l] | (s > top[l]))):
                        m.d.sync += top[l].eq(s)
                m.d.sync += have.eq(have | inp.kept)
            with m.If(inp.last):
                m.d.sync += [phase.eq(_Phase.EXP), rd_addr.eq(0)]
                m.d.sync += [t.eq(0) for t in total]

        # --- Read pipeline shared by phases 2 and 4: issue -> s1 (word) -> s1b (operands)
        # -> s2 (product). ---
        # It only moves when the output register can take a beat; o.valid is low outside
        # phase 4, so phase 2 runs at one word a cycle.
        adv = ~o.valid | o.ready
        reading = (phase == _Phase.EXP) | (phase == _Phase.OUT)
        issue = reading & (rd_addr != count)
        m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(adv)]

        s1_valid, s1_last = Signal(), Signal()
        s1_addr = Signal(range(N))
        ops = Signal(data.StructLayout({
            "valid": 1, "last": 1, "addr": range(N), "kept": V,
            "a": data.ArrayLayout(mul_a_bits, V), "b": data.ArrayLayout(mul_b_bits, V)}),
            name="s1b")
        s2_valid, s2_last = Signal(), Signal()
        s2_addr = Signal(range(N))
        s2_kept = Signal(V)
        s2_prod = [Signal(mul_a_bits + mul_b_bits, name=f"prod_{l}") for l in range(V)]
        word = rp.data
        out_phase = phase == _Phase.OUT

        with m.If(adv):
            m.d.sync += [s1_valid.eq(issue), s1_addr.eq(rd_addr),
                         s1_last.eq(rd_addr == count - 1)]
            with m.If(issue):
                m.d.sync += rd_addr.eq(rd_addr + 1)
            m.d.sync += [ops.valid.eq(s1_valid), ops.last.eq(s1_last), ops.addr.eq(s1_addr),
                         ops.kept.eq(word.kept)]
            for l in range(V):
                dist = (top[l] - word.value[l])[:A]        # >= 0 on kept entries
                e = word.value[l].as_unsigned()[:EXP_BITS]
                recip = Mux(have[l], quo[l], 0)            # no kept entry: no division
                m.d.sync += [ops.a[l].eq(Mux(out_phase, e, dist)),
                             ops.b[l].eq(Mux(out_phase, recip, mult))]
            m.d.sync += [s2_valid.eq(ops.valid), s2_last.eq(ops.last), s2_addr.eq(ops.addr),
                         s2_kept.eq(ops.kept)]
            m.d.sync += [s2_prod[l].eq(ops.a[l] * ops.b[l]) for l in range(V)]

        # --- Phase 2: t (s2b), exponent (s3), write-back and sum. ------------------------
        s3_valid, s3_last, s3_addr, s3_e = self._exponent(
            m, valid=s2_valid & ~out_phase, last=s2_last, addr=s2_addr, kept=s2_kept,
            prod=s2_prod, shift=shift)
        with m.If(s3_valid):
            for l in range(V):
                m.d.sync += total[l].eq(total[l] + s3_e[l])
            with m.If(s3_last):
                m.d.sync += [phase.eq(_Phase.DIV), div_step.eq(0)]
                # Quotient bits above K are zero (sum >= EXP2_LUT[0]): start the long
                # division with the dividend's bits above them as the partial remainder.
                m.d.sync += [r.eq(1 << (contract.SOFTMAX_RECIP_BITS - K)) for r in rem]

        # Phase 1 writes scores, phase 2 writes e behind its reads (never the same word).
        with m.If(phase == _Phase.LOAD):
            m.d.comb += [wp.addr.eq(count), wp.en.eq(accept & ~surplus),
                         wp.data.value.eq(inp.score), wp.data.kept.eq(inp.kept)]
        with m.Else():
            m.d.comb += [wp.addr.eq(s3_addr), wp.en.eq(s3_valid)]
            m.d.comb += [wp.data.value[l].eq(s3_e[l]) for l in range(V)]

        # --- Phase 3: restoring division, one quotient bit per cycle, all lanes. ---------
        with m.If(phase == _Phase.DIV):
            for l in range(V):
                fit, rest = arith.restoring_step(rem[l], total[l])
                m.d.sync += [rem[l].eq(rest), quo[l].eq(Cat(fit, quo[l][:-1]))]
            m.d.sync += div_step.eq(div_step + 1)
            with m.If(div_step == K - 1):
                m.d.sync += [phase.eq(_Phase.OUT), rd_addr.eq(0)]

        # --- Phase 4: output register. ---------------------------------------------------
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
            with m.If(o.payload.last):
                # The block has left: take the next one.
                m.d.sync += [phase.eq(_Phase.LOAD), count.eq(0), have.eq(0)]
        with m.If(adv & out_phase):
            m.d.sync += o.valid.eq(s2_valid)
            with m.If(s2_valid):
                # s2_prod is e * recip here (one multiplier per lane serves both passes).
                probs = [arith.softmax_prob(s2_prod[l]) for l in range(V)]
                m.d.sync += o.payload.eq(pack_layout(
                    m, softmax_output_layout(cfg), {"prob": probs, "last": s2_last},
                    name="o_next"))
        return m

    def _exponent(self, m, *, valid, last, addr, kept, prod, shift):
        """The exponent pass after the product: ``t = round_shift(prod, shift)`` registered
        (s2b), then ``e = exp2_neg(t)`` (0 on entries not kept) registered (s3). Returns s3's
        ``(valid, last, addr, e)``."""
        V, N = self._config.lanes, self._config.max_tokens
        t_shape = arith.round_shift(prod[0], shift).shape()
        s2b = Signal(data.StructLayout({
            "valid": 1, "last": 1, "addr": range(N), "kept": V,
            "t": data.ArrayLayout(t_shape, V)}), name="s2b")
        m.d.sync += [s2b.valid.eq(valid), s2b.last.eq(last), s2b.addr.eq(addr),
                     s2b.kept.eq(kept)]
        m.d.sync += [s2b.t[l].eq(arith.round_shift(prod[l], shift)) for l in range(V)]
        s3_valid, s3_last = Signal(), Signal()
        s3_addr = Signal(range(N))
        s3_e = [Signal(EXP_BITS, name=f"e_{l}") for l in range(V)]
        m.d.sync += [s3_valid.eq(s2b.valid), s3_last.eq(s2b.last), s3_addr.eq(s2b.addr)]
        for l in range(V):
            m.d.sync += s3_e[l].eq(Mux(s2b.kept[l], arith.exp2_neg(s2b.t[l]), 0))
        return s3_valid, s3_last, s3_addr, s3_e
