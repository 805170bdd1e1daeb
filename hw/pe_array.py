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

Pipeline: operand routing register, product register, accumulator; output bank, requantiser
product register, output register. Back-pressure on ``o`` stalls the input only when a second
accumulation finishes before the bank has drained.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith

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
        # bank still draining.
        advance = ~(b_valid & b_last & bank_busy)
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
                        m.d.sync += [b_prod[r][l].eq(a.vector[r][l] * a.scalar[r]),
                                     b_en[r][l].eq(a.mask[r][l])]

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

        # --- Output path: bank -> requantiser products (r1) -> output register. -----------
        out_adv = ~self.o.valid | self.o.ready
        grp = Signal(range(groups))
        row = Signal(range(R))
        r1_valid, r1_bypass, r1_ovf, r1_row_done, r1_last = (Signal() for _ in range(5))
        r1_row = Signal.like(row)
        r1_shift = Signal.like(a.shift)
        r1_raw = [Signal(acc_shape, name=f"r1_raw_{q}") for q in range(RQ)]
        r1_prod = [Signal(arith.shape_of(contract.product_format(acc_fmt, contract.REQ_MULT)),
                          name=f"r1_prod_{q}") for q in range(RQ)]
        asm = [Signal(acc_shape, name=f"asm_{l}") for l in range(V)]   # row being assembled
        asm_ovf = Signal()

        with m.If(out_adv):
            m.d.sync += r1_valid.eq(bank_busy)
        with m.If(out_adv & bank_busy):
            row_done = grp == groups - 1
            final = row_done & (row == R - 1)
            for q in range(RQ):
                m.d.sync += [r1_raw[q].eq(bank[q]), r1_prod[q].eq(bank[q] * bank_mult)]
            m.d.sync += [r1_ovf.eq(Cat(*bank_ovf[:RQ]).any()), r1_bypass.eq(bank_bypass),
                         r1_shift.eq(bank_shift), r1_row.eq(row), r1_row_done.eq(row_done),
                         r1_last.eq(final)]
            # Shift the bank so that the next lanes to leave are always at its head.
            for j in range(R * V - RQ):
                m.d.sync += [bank[j].eq(bank[j + RQ]), bank_ovf[j].eq(bank_ovf[j + RQ])]
            m.d.sync += grp.eq(Mux(row_done, 0, grp + 1))
            with m.If(row_done):
                m.d.sync += row.eq(Mux(row == R - 1, 0, row + 1))
            with m.If(final):
                m.d.sync += bank_busy.eq(0)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(out_adv & r1_valid):
            results = [Mux(r1_bypass, r1_raw[q],
                           arith.requantize_product(r1_prod[q], r1_shift, cfg.out_format))
                       for q in range(RQ)]
            # Lanes enter the assembly register at the top and move down by one group a step.
            assembled = asm[RQ:] + results
            row_ovf = asm_ovf | r1_ovf
            m.d.sync += [asm[l].eq(assembled[l]) for l in range(V)]
            m.d.sync += asm_ovf.eq(Mux(r1_row_done, 0, row_ovf))
            with m.If(r1_row_done):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.row.eq(r1_row),
                             self.o.payload.last.eq(r1_last),
                             self.o.payload.overflow.eq(row_ovf)]
                m.d.sync += [self.o.payload.data[l].eq(assembled[l]) for l in range(V)]
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
