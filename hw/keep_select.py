"""Keep selection of the sub-vector predictor: a query block's top-``K`` key columns as a mask.

For one query block (a row of units of :meth:`golden.subvector.SubvectorAttention.keep`) the
unit takes the predicted scores of its ``N`` key columns and emits the bitmask of the ``K``
columns with the highest score, ties going to the lower column index: exactly the columns of
golden's stable descending sort, ``torch.sort(pred, descending=True, stable=True)[:K]``. The
output beat is the attention engine's mask beat (:func:`hw.attention_engine.attention_mask_layout`,
i.e. :func:`hw.subvector_decoder.subvector_mask_layout` with ``order="block"``): bit ``j`` =
column ``j`` kept.

Protocol
--------
* ``i``: one beat per ``lanes`` consecutive scores of the block (beat ``b`` holds columns
  ``b*lanes .. b*lanes + lanes - 1``), ``last`` on the block's final beat. Lanes of columns
  ``>= n`` are ignored (a partial last beat), so are beats past the buffer (columns
  ``>= max_tokens``). ``head_last`` is taken from the block's final beat and copied to the
  output beat's ``last`` (the attention engine wants ``last`` on a head's final block).
* ``n`` (``N``) and ``keep`` (``K``): plain inputs, held from the block's first beat until its
  last beat has been taken. ``K`` is computed by the host with :func:`keep_count`; the unit
  does not compute ``ceil(rho * N)``.
* ``o``: one beat per block, held until taken; the next block's first beat is taken the cycle
  after.

Errors: none are flagged. ``K`` is clamped to ``[1, N']``, ``N' = min(n, max_tokens, lanes x
beats received)`` (so ``K = 0`` keeps one column, ``K > N`` keeps all; columns a short block
did not send count as absent). ``N' = 0`` gives an empty mask.

Algorithm (radix select)
------------------------
Scores are compared in offset binary (sign bit flipped), so unsigned order is signed order.
The ``K``-th largest value ``T`` is found bit by bit from the MSB: with the prefix ``P`` of
the bits decided so far, one pass counts (``lanes`` comparators per cycle) the scores ``>=
P | 2**b``; if at least ``K`` are, bit ``b`` of ``T`` is 1. The MSB is counted while the block
loads. The count of the last rejected candidate is ``G = #(score > T)``. A final pass marks
every score ``> T`` and the ``K - G`` lowest-index scores ``== T`` (a prefix count across the
lanes of a word, carried from word to word).

Cost, with ``W = ceil(N / lanes)`` beats and ``B`` score bits, no stalls: load ``W`` cycles
(one beat a cycle); select ``B * W`` cycles (``B - 1`` bit passes and the final pass, back to
back: the synchronous buffer read is pipelined across passes) plus 1 for the read latency;
the output beat is valid the cycle after that, i.e. ``B * W + 2`` cycles after the cycle of
the last input beat (latency), and, taken at once, the next block's first beat enters the
cycle after. A block thus occupies the unit ``(B + 1) * W + 2`` cycles, first beat to the
next block's first beat (``tests/test_keep_select.py`` measures both). Input is refused from
a block's last beat until its output beat is taken (one buffer, no overlap of blocks).

Memory: a buffer of ``ceil(max_tokens / lanes)`` words of ``lanes`` scores
(:class:`amaranth.lib.memory.Memory`, one write and one synchronous read port), a mask register
of ``max_tokens`` (rounded up to ``lanes``) bits and a few counters.
"""

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import bits_for, log2_exact
from hw.subvector_decoder import subvector_mask_layout

__all__ = ["keep_count", "keep_score_layout", "keep_mask_layout", "KeepSelect"]


#: Columns kept of ``n`` at keep ratio ``rho`` (:func:`golden.contract.keep_count`, the host
#: computes the ``keep`` register with it).
keep_count = contract.keep_count


def _score_shape(config, score_shape):
    return arith.shape_of(config.acc_format) if score_shape is None else Shape.cast(score_shape)


def keep_score_layout(config, score_shape=None):
    """One input beat: ``lanes`` consecutive scores of a query block."""
    return data.StructLayout({
        "score":     data.ArrayLayout(_score_shape(config, score_shape), config.lanes),
        "last":      1,    # the block's final beat
        "head_last": 1,    # (on the final beat) the block is its head's last: output ``last``
    })


def keep_mask_layout(config):
    """One output beat: the attention engine's mask beat."""
    return subvector_mask_layout(config, order="block")


class KeepSelect(wiring.Component):
    """Top-``K`` key columns of a query block's predicted scores (see the module docstring).

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``lanes`` (scores per beat) and ``max_tokens`` (largest ``N``, mask width).
    score_shape : Amaranth shape, optional
        Shape of one predicted score (default: the accumulator format's). Signed scores are
        ordered as signed, unsigned ones as unsigned.

    Attributes
    ----------
    i : ``In(stream.Signature(keep_score_layout(config, score_shape)))``
    o : ``Out(stream.Signature(keep_mask_layout(config)))``
    n : ``In(range(max_tokens + 1))``
        Columns ``N`` of the block.
    keep : ``In(range(max_tokens + 1))``
        Columns ``K`` to keep (clamped to ``[1, N]``).
    busy : ``Out(1)``
        A block is inside (from its first beat until its output beat is taken).
    """

    def __init__(self, config, score_shape=None):
        self._config = config
        self._shape = _score_shape(config, score_shape)
        count = unsigned(bits_for(config.max_tokens + 1))
        super().__init__({
            "i": In(stream.Signature(keep_score_layout(config, self._shape))),
            "o": Out(stream.Signature(keep_mask_layout(config))),
            "n": In(count),
            "keep": In(count),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    @property
    def score_shape(self):
        return self._shape

    def _offset(self, score):
        """A score as an unsigned value of the same order."""
        b = self._shape.width
        raw = Value.cast(score)
        return Cat(raw[:b - 1], ~raw[b - 1]) if self._shape.signed else raw

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, T = cfg.lanes, cfg.max_tokens
        B = self._shape.width
        ns = _State(cfg, B)
        m.submodules.buf = ns.buf = Memory(shape=data.ArrayLayout(unsigned(B), V),
                                           depth=ns.depth, init=[])
        ns.wp = ns.buf.write_port()
        ns.rp = ns.buf.read_port(transparent_for=())
        for name in ("w", "cnt", "n_eff", "k_eff", "words", "prefix", "onehot", "gt_count",
                     "eq_count", "head_last", "addr", "pass_", "issuing", "mask",
                     "s1_valid", "s1_addr", "s1_last", "s1_final"):
            ns.add(name)

        with m.FSM(name="keep_fsm"):
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), self.busy.eq(ns.w != 0)]
                with m.If(self.i.valid):
                    self._load(m, ns)
            with m.State("SCAN"):
                m.d.comb += self.busy.eq(1)
                self._issue(m, ns)
                self._count(m, ns)
            with m.State("OUT"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1),
                             self.o.payload.mask.eq(ns.mask[:T]),
                             self.o.payload.last.eq(ns.head_last)]
                with m.If(self.o.ready):
                    m.d.sync += ns.mask.eq(0)
                    m.next = "LOAD"
        return m

    def _load(self, m, ns):
        """An accepted input beat: store it, count its valid non-negative (MSB-set) scores; on
        the last beat latch N', K', the word count and the MSB decision."""
        cfg = self._config
        V, T = cfg.lanes, cfg.max_tokens
        B = self._shape.width
        beat = self.i.payload
        words = [self._offset(beat.score[l]) for l in range(V)]
        n_cap = Mux(self.n > T, T, self.n)
        col0 = ns.w << log2_exact(V)
        valid = [col0 + l < n_cap for l in range(V)]
        msb = sum(Mux(valid[l], words[l][B - 1], 0) for l in range(V))
        m.d.comb += [ns.wp.addr.eq(ns.w), ns.wp.data.eq(Cat(*words)),
                     ns.wp.en.eq(ns.w < ns.depth)]
        w_new = Mux(ns.w < ns.depth, ns.w + 1, ns.depth)
        m.d.sync += [ns.w.eq(w_new), ns.cnt.eq(ns.cnt + msb)]
        with m.If(beat.last):
            got = w_new << log2_exact(V)
            n_eff = Signal.like(ns.n_eff, name="n_eff_now")
            k_eff = Signal.like(ns.k_eff, name="k_eff_now")
            words_now = Signal.like(ns.words, name="words_now")
            acc = ns.cnt + msb
            m.d.comb += [n_eff.eq(Mux(got < n_cap, got, n_cap)),
                         k_eff.eq(Mux(self.keep == 0, 1, Mux(self.keep > n_eff, n_eff,
                                                                self.keep))),
                         words_now.eq((n_eff + V - 1) >> log2_exact(V))]
            m.d.sync += [ns.n_eff.eq(n_eff), ns.k_eff.eq(k_eff), ns.words.eq(words_now),
                         ns.w.eq(0), ns.cnt.eq(0), ns.eq_count.eq(0), ns.addr.eq(0),
                         ns.pass_.eq(0), ns.issuing.eq(1), ns.head_last.eq(beat.head_last),
                         ns.onehot.eq(1 << (B - 2) if B > 1 else 0)]
            with m.If(acc >= k_eff):
                m.d.sync += [ns.prefix.eq(1 << (B - 1)), ns.gt_count.eq(0)]
            with m.Else():
                m.d.sync += [ns.prefix.eq(0), ns.gt_count.eq(acc)]
            with m.If(words_now == 0):
                m.d.sync += ns.issuing.eq(0)
                m.next = "OUT"
            with m.Else():
                m.next = "SCAN"

    def _issue(self, m, ns):
        """Read addresses: ``B`` passes of ``words`` words back to back."""
        B = self._shape.width
        at_end = ns.addr == ns.words - 1
        m.d.comb += ns.rp.addr.eq(ns.addr)
        m.d.sync += [ns.s1_valid.eq(ns.issuing), ns.s1_addr.eq(ns.addr),
                     ns.s1_last.eq(at_end), ns.s1_final.eq(ns.pass_ == B - 1)]
        with m.If(ns.issuing):
            m.d.sync += ns.addr.eq(Mux(at_end, 0, ns.addr + 1))
            with m.If(at_end):
                m.d.sync += ns.pass_.eq(ns.pass_ + 1)
                with m.If(ns.pass_ == B - 1):
                    m.d.sync += ns.issuing.eq(0)

    def _count(self, m, ns):
        """A word read back: a bit pass counts scores ``>= prefix | onehot``; the final pass
        marks scores ``> T`` and the first ``K - G`` scores ``== T``."""
        V = self._config.lanes
        col0 = ns.s1_addr << log2_exact(V)
        valid = [col0 + l < ns.n_eff for l in range(V)]
        u = [ns.rp.data[l] for l in range(V)]
        cand = ns.prefix | ns.onehot
        ge = [valid[l] & (u[l] >= cand) for l in range(V)]
        acc = ns.cnt + sum(ge)
        gt = [valid[l] & (u[l] > ns.prefix) for l in range(V)]
        eq = [valid[l] & (u[l] == ns.prefix) for l in range(V)]
        marks, before = [], ns.gt_count + ns.eq_count
        for l in range(V):
            marks.append(gt[l] | (eq[l] & (before < ns.k_eff)))
            before = before + eq[l]
        with m.If(ns.s1_valid & ~ns.s1_final):
            m.d.sync += ns.cnt.eq(acc)
            with m.If(ns.s1_last):
                m.d.sync += [ns.cnt.eq(0), ns.onehot.eq(ns.onehot >> 1)]
                with m.If(acc >= ns.k_eff):
                    m.d.sync += ns.prefix.eq(cand)
                with m.Else():
                    m.d.sync += ns.gt_count.eq(acc)
        with m.If(ns.s1_valid & ns.s1_final):
            m.d.sync += [ns.mask.word_select(ns.s1_addr, V).eq(Cat(*marks)),
                         ns.eq_count.eq(ns.eq_count + sum(eq))]
            with m.If(ns.s1_last):
                m.next = "OUT"


class _State:
    """The unit's registers (created by :meth:`add`), with their shapes from the config."""

    def __init__(self, cfg, bits):
        self.depth = cfg.max_blocks
        count = unsigned(bits_for(cfg.max_tokens + 1))
        self._shapes = {
            "w": range(self.depth + 1), "cnt": count, "n_eff": count, "k_eff": count,
            "words": range(self.depth + 1), "prefix": unsigned(bits),
            "onehot": unsigned(max(1, bits - 1)), "gt_count": count, "eq_count": count,
            "head_last": 1, "addr": range(self.depth), "pass_": range(bits + 1),
            "issuing": 1, "mask": unsigned(self.depth * cfg.lanes),
            "s1_valid": 1, "s1_addr": range(self.depth), "s1_last": 1, "s1_final": 1,
        }

    def add(self, name):
        setattr(self, name, Signal(self._shapes[name], name=name.rstrip("_")))
