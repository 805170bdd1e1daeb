"""The augmented PE array: ``rows`` PE rows of ``lanes`` multiply-accumulate lanes.

The atomic operation of the accelerator is a v-wide vector times a broadcast scalar,
accumulated. Both sparse workloads reduce to it (docs/architecture.md):

* linear projection ``y[chunk] += delta_i * W[chunk, i]``: one scalar (``delta_i``) is shared by
  every row, each row takes its own ``lanes``-slice of the weight column
  (:attr:`Route.SHARED_SCALAR`);
* attention ``S[b, j] += Q[b, k] * K[j, k]`` and ``O[b, k] += A[b, j] * V[j, k]``: one query
  (or probability) sub-vector is shared by every row, each row takes its own scalar
  (:attr:`Route.SHARED_VECTOR`).

One input beat drives every row for one cycle. A beat with ``last`` closes an accumulation: the
accumulators move to an output bank (so the next accumulation starts at once) and leave as
``rows`` output beats of one row each, requantised by the contract's rule or, with ``bypass``,
as raw accumulator values. A lane whose accumulator leaves its format sets the row's
``overflow`` bit on output (the value wraps, as the contract says).

Pipeline: operand routing register, product register, accumulator; output bank, the
requantisers (:class:`hw.requantiser.Requantiser`, four steps), the row assembly register,
output register. Back-pressure on ``o`` stalls the input only when a second
accumulation finishes before the bank has drained.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.requantiser import Requantiser

__all__ = ["Route", "pe_input_layout", "pe_output_layout", "PEArray", "PEClientSignature"]


class Route(enum.Enum, shape=2):
    """How one input beat's operands reach the rows."""
    #: ``scalar[0]`` to every row, ``vector[r]`` to row ``r`` (linear projection).
    SHARED_SCALAR = int(contract.PERoute.SHARED_SCALAR)
    #: ``vector[0]`` to every row, ``scalar[r]`` to row ``r`` (attention QK^T and A.V).
    SHARED_VECTOR = int(contract.PERoute.SHARED_VECTOR)
    #: ``scalar[r]`` and ``vector[r]`` to row ``r``.
    PER_ROW = int(contract.PERoute.PER_ROW)


def pe_input_layout(config):
    """Layout of one input beat of the PE array."""
    op = arith.shape_of(config.operand_format)
    return data.StructLayout({
        "scalar": data.ArrayLayout(op, config.rows),
        "vector": data.ArrayLayout(data.ArrayLayout(op, config.lanes), config.rows),
        "mask":   data.ArrayLayout(unsigned(config.lanes), config.rows),
        "route":  Route,
        "clear":  1,      # accumulators restart from zero with this beat
        "last":   1,      # this beat closes the accumulation: emit the results
        "bypass": 1,      # emit raw accumulators instead of requantised values
        "mult":   arith.shape_of(contract.REQ_MULT),
        "shift":  arith.shape_of(contract.REQ_SHIFT),
    })


def pe_output_layout(config):
    """Layout of one output beat: the results of one row."""
    return data.StructLayout({
        "data":     data.ArrayLayout(arith.shape_of(config.acc_format), config.lanes),
        "row":      unsigned(max(1, contract.ceil_log2(config.rows))),
        "overflow": 1,    # an accumulator of this row left its format
        "last":     1,    # last row of the accumulation
    })


class PEArray(wiring.Component):
    """``rows`` x ``lanes`` vector-scalar multiply-accumulate array.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        Geometry (``rows``, ``lanes``, ``requant_lanes``) and formats.

    Attributes
    ----------
    i : ``In(stream.Signature(pe_input_layout(config)))``
        Operand beats.
    o : ``Out(stream.Signature(pe_output_layout(config)))``
        Result rows, ``rows`` beats per accumulation.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(pe_input_layout(config))),
            "o": Out(stream.Signature(pe_output_layout(config))),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, V, RQ = cfg.rows, cfg.lanes, cfg.requant_lanes
        groups = V // RQ
        acc_fmt = cfg.acc_format
        acc_shape = arith.shape_of(acc_fmt)
        prod_shape = arith.shape_of(contract.product_format(cfg.operand_format,
                                                            cfg.operand_format))
        inp = self.i.payload

        # --- Stage A: operand routing, registered. ----------------------------------------
        a = Signal(pe_input_layout(cfg))
        a_valid = Signal()
        # --- Stage B: products. -----------------------------------------------------------
        b_prod = [[Signal(prod_shape, name=f"prod_{r}_{l}") for l in range(V)] for r in range(R)]
        b_en = [[Signal(name=f"en_{r}_{l}") for l in range(V)] for r in range(R)]
        # Each lane's product by name (`mul_<row>_<lane>`), so that a board build can pick the
        # multipliers it builds in logic (boards.build: the iCE40's two LUT lanes).
        mul = [[Signal(prod_shape, name=f"mul_{r}_{l}") for l in range(V)] for r in range(R)]
        m.d.comb += [mul[r][l].eq(a.vector[r][l] * a.scalar[r])
                     for r in range(R) for l in range(V)]
        b_valid, b_clear, b_last, b_bypass = Signal(), Signal(), Signal(), Signal()
        b_mult = Signal.like(a.mult)
        b_shift = Signal.like(a.shift)
        # --- Stage C: accumulators and the output bank. -----------------------------------
        acc = [[Signal(acc_shape, name=f"acc_{r}_{l}") for l in range(V)] for r in range(R)]
        ovf = [[Signal(name=f"ovf_{r}_{l}") for l in range(V)] for r in range(R)]
        bank = [Signal(acc_shape, name=f"bank_{j}") for j in range(R * V)]   # row-major
        bank_ovf = [Signal(name=f"bank_ovf_{j}") for j in range(R * V)]
        bank_busy, bank_bypass = Signal(), Signal()
        bank_mult = Signal.like(a.mult)
        bank_shift = Signal.like(a.shift)

        # The pipeline moves as one; it waits only when a finished accumulation finds the
        # bank still draining. The wait is a register (its next value is computed from the
        # next values of what it depends on) because it enables every operand, product and
        # accumulator register of the array: thousands of loads behind one flip-flop, not
        # behind a LUT of the bank's state.
        stall = Signal()
        advance = ~stall
        m.d.comb += self.i.ready.eq(advance)

        with m.If(advance):
            m.d.sync += a_valid.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += a.eq(inp)
                for r in range(R):
                    m.d.sync += a.scalar[r].eq(
                        Mux(inp.route == Route.SHARED_SCALAR, inp.scalar[0], inp.scalar[r]))
                    for l in range(V):
                        m.d.sync += a.vector[r][l].eq(
                            Mux(inp.route == Route.SHARED_VECTOR, inp.vector[0][l],
                                inp.vector[r][l]))

            m.d.sync += b_valid.eq(a_valid)
            with m.If(a_valid):
                m.d.sync += [b_clear.eq(a.clear), b_last.eq(a.last), b_bypass.eq(a.bypass),
                             b_mult.eq(a.mult), b_shift.eq(a.shift)]
                for r in range(R):
                    for l in range(V):
                        m.d.sync += [b_prod[r][l].eq(mul[r][l]), b_en[r][l].eq(a.mask[r][l])]

            with m.If(b_valid):
                for r in range(R):
                    for l in range(V):
                        total = Mux(b_clear, 0, acc[r][l]) + Mux(b_en[r][l], b_prod[r][l], 0)
                        new = total[:acc_fmt.bits].as_signed()
                        new_ovf = (ovf[r][l] & ~b_clear) | ~arith.fits(total, acc_fmt)
                        m.d.sync += [acc[r][l].eq(new), ovf[r][l].eq(new_ovf)]
                        with m.If(b_last):
                            m.d.sync += [bank[r * V + l].eq(new),
                                         bank_ovf[r * V + l].eq(new_ovf)]
                with m.If(b_last):
                    m.d.sync += [bank_busy.eq(1), bank_bypass.eq(b_bypass),
                                 bank_mult.eq(b_mult), bank_shift.eq(b_shift)]

        # --- Output path: bank -> requantisers -> row assembly -> o. ----------------------
        # The row is assembled in `stage`, which also holds a finished row while o is taken;
        # the output path moves while `stage` is not holding one (a register): o.ready
        # reaches only o and `stage`, not the bank and the requantisers behind them.
        stage = Signal(self.o.payload.shape())
        stage_full = Signal()
        out_adv = ~stage_full
        grp = Signal(range(groups))
        row = Signal(range(R))
        tag = data.StructLayout({"row": unsigned(len(row)), "row_done": 1, "last": 1,
                                 "overflow": 1})
        m.submodules.requantiser = rq = Requantiser(cfg, tag)
        draining = bank_busy
        drain_done = (grp == groups - 1) & (row == R - 1)
        m.d.comb += [rq.en.eq(out_adv), rq.i.valid.eq(draining),
                     rq.i.mult.eq(bank_mult), rq.i.shift.eq(bank_shift),
                     rq.i.bypass.eq(bank_bypass),
                     rq.i.tag.row.eq(row), rq.i.tag.row_done.eq(grp == groups - 1),
                     rq.i.tag.last.eq(drain_done),
                     rq.i.tag.overflow.eq(Cat(*bank_ovf[:RQ]).any())]
        m.d.comb += [rq.i.acc[q].eq(bank[q]) for q in range(RQ)]
        with m.If(out_adv & draining):
            # Shift the bank so that the next lanes to leave are always at its head.
            for j in range(R * V - RQ):
                m.d.sync += [bank[j].eq(bank[j + RQ]), bank_ovf[j].eq(bank_ovf[j + RQ])]
            m.d.sync += grp.eq(Mux(grp == groups - 1, 0, grp + 1))
            with m.If(grp == groups - 1):
                m.d.sync += row.eq(Mux(row == R - 1, 0, row + 1))
            with m.If(drain_done):
                m.d.sync += bank_busy.eq(0)
        # The stall's next value: b will hold a closing beat while the bank stays busy.
        b_valid_n = Mux(advance, a_valid, b_valid)
        b_last_n = Mux(advance & a_valid, a.last, b_last)
        busy_n = ((bank_busy & ~(out_adv & drain_done)) | (advance & b_valid & b_last))
        m.d.sync += stall.eq(b_valid_n & b_last_n & busy_n)

        # Lanes enter the assembly register at the top and move down by one group a step.
        asm_ovf = Signal()
        res = rq.o
        assembled = [stage.data[l] for l in range(RQ, V)] + [res.data[q] for q in range(RQ)]
        row_ovf = asm_ovf | res.tag.overflow
        beat = Signal(self.o.payload.shape())
        m.d.comb += [beat.row.eq(res.tag.row), beat.last.eq(res.tag.last),
                     beat.overflow.eq(row_ovf)]
        m.d.comb += [beat.data[l].eq(assembled[l]) for l in range(V)]
        o = self.o
        o_free = ~o.valid | o.ready
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(stage_full & o_free):
            m.d.sync += [o.valid.eq(1), o.payload.eq(stage), stage_full.eq(0)]
        with m.If(out_adv & res.valid):
            m.d.sync += [stage.data[l].eq(assembled[l]) for l in range(V)]
            m.d.sync += asm_ovf.eq(Mux(res.tag.row_done, 0, row_ovf))
            with m.If(res.tag.row_done):
                with m.If(o_free):
                    m.d.sync += [o.valid.eq(1), o.payload.eq(beat)]
                with m.Else():
                    m.d.sync += [stage.row.eq(beat.row), stage.last.eq(beat.last),
                                 stage.overflow.eq(beat.overflow), stage_full.eq(1)]
        return m


class PEClientSignature(wiring.Signature):
    """A client of the PE array (an engine, or the arbiter towards the array): it sends
    operand beats on ``req`` (:func:`pe_input_layout`) and takes result rows on ``res``
    (:func:`pe_output_layout`).

    Protocol: a client owns the array's accumulators from a ``clear`` beat to its ``last`` beat,
    and sends those beats without waiting on anything outside itself; it must be able to take
    the ``rows`` result rows of every accumulation it closes (:class:`hw.pe_arbiter.PEArbiter`
    returns each row to the client that closed the accumulation, in order).
    """

    def __init__(self, config):
        super().__init__({"req": Out(stream.Signature(pe_input_layout(config))),
                          "res": In(stream.Signature(pe_output_layout(config)))})
