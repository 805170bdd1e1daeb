"""Residual add stage: joins the skip stream and the block's stream beat by beat.

The stage computes the integer model's residual add (``golden.intvidt._IntOps.residual``,
``qtorch.saturate(x + y, contract.RESID)``): output beat ``n`` carries, in lane ``l``,
``RESID.saturate(skip[n].data[l] + i[n].data[l])``, and every other field of ``i``'s beat
``n`` (``last``, ...) unchanged.

Protocol:

* **Join**: a beat is taken from ``i`` and ``skip`` together, in the same cycle, only when both
  are valid (``ready`` of each waits for ``valid`` of both, as ``lib.stream`` allows); each
  stream may stall independently.
* **Run**: the host sets ``tokens`` and fires ``start``. The stage joins beats while running
  until ``tokens`` tokens (beats with ``last`` on ``i``) have entered, so that beats of the next
  run wait for the next START; the run is DONE once ``tokens`` tokens have left on ``o``.
  ``tokens = 0`` is a valid, empty run (DONE at once, no beat taken), so ``config`` is never
  raised.
* **Errors**: ``frame``, sticky, when the ``last`` bits of a joined pair disagree; the beat is
  still emitted, with ``i``'s ``last`` (``i`` frames the tokens), and the run goes on.

Throughput one beat per cycle; latency one cycle (one output register; a stalled output holds
its beat and the inputs wait).
"""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.engine import Engine, EngineRegisters, Setting, finish_on_tokens, token_gate
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "ResidualAdd"]

#: The residual stage's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "residual",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)")],
    errors=(("frame", "the last bits of a joined i / skip beat pair disagreed"),),
    counters=(("tokens_out", "tokens emitted"),))


class ResidualAdd(Engine):
    """Saturating lane-wise sum of two :func:`hw.linear_engine.activation_layout` streams.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``lanes`` (adders, one per lane).

    Attributes
    ----------
    i : ``In(stream.Signature(activation_layout(config)))``
        The block's output beats; they frame the tokens (``last``).
    skip : ``In(stream.Signature(activation_layout(config)))``
        The residual stream's beats, one per beat of ``i``.
    o : ``Out(stream.Signature(activation_layout(config)))``
        The sums, saturated into :data:`golden.contract.RESID`; other fields from ``i``.
    csr : ``In(RegisterSignature)``
        Registers :data:`REGISTERS`.

    Errors: ``frame`` (``i`` and ``skip`` disagree on ``last`` in a joined pair; the beat
    leaves with ``i``'s ``last``). ``config`` is never raised (any ``tokens`` is valid).

    Throughput one beat per cycle, latency one cycle, under any back-pressure.
    """

    registers = REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        elem = Shape.cast(layout.members["data"].elem_shape)
        if elem.width < contract.RESID.bits or not elem.signed:
            raise ValueError("activation lanes ({!r}) cannot hold RESID values".format(elem))
        super().__init__(config, {
            "i": In(stream.Signature(layout)),
            "skip": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        i, skip, o = self.i, self.skip, self.o
        advance = ~o.valid | o.ready
        join = Signal()
        m.d.comb += [join.eq(i.valid & skip.valid & advance
                             & token_gate(m, ctl, join & i.payload.last)),
                     i.ready.eq(join), skip.ready.eq(join),
                     ctl.raise_error["frame"].eq(join & (i.payload.last != skip.payload.last))]

        with m.If(advance):
            m.d.sync += o.valid.eq(join)
        with m.If(join):
            for lane in range(self._config.lanes):
                m.d.sync += o.payload.data[lane].eq(
                    arith.saturate(skip.payload.data[lane] + i.payload.data[lane],
                                   contract.RESID))
            for name, _ in o.payload.shape():
                if name != "data":
                    m.d.sync += o.payload[name].eq(i.payload[name])
        m.d.comb += ctl.config_ok.eq(1)
        finish_on_tokens(m, ctl, o)
        return m

