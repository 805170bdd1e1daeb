"""Element-wise GELU stage: every lane of every activation beat through the GELU table.

The stage applies the integer model's GELU (:func:`golden.qtorch.gelu`): a table of
:func:`golden.contract.gelu_table` (one :data:`golden.contract.ACT` entry per ACT input,
``table[x - ACT.min]``) looked up in every lane. Beat ``n`` of the output carries, in lane
``l``, ``table[sat(x) - ACT.min]`` of lane ``l`` of input beat ``n`` (``sat`` = saturation into
ACT), and every other field of the beat (``last``, ...) unchanged.

Protocol:

* **Loading** (while not running): ``t_load`` takes one table entry per beat, entries in order
  from 0 (``ACT.min``) to ``ACT.max - ACT.min``; the CTRL pulse ``reset_load`` restarts at
  entry 0. Entries past the end of the table are accepted and dropped. While running,
  ``t_load.ready`` is low.
* **Run**: the host sets ``tokens`` and fires ``start``. The stage takes input beats while
  running until ``tokens`` tokens (beats with ``last``) have entered, so that beats of the next
  run wait for the next START; the run is DONE once ``tokens`` tokens have left on ``o``.
  ``tokens = 0`` is a valid, empty run (DONE at once, no beat taken); ``config`` is raised only
  by a ``layer`` at or past ``max_layers``.
* **Layers**: the table holds ``max_layers`` parts, one per transformer block; the ``layer``
  setting selects the part a run looks up and the loads write.
* **Errors**: ``range``, sticky, when a lane of a taken beat lies outside ACT (the input field
  is int16; GELU's input is fc1's int8 output). The saturated value is looked up and the run
  goes on.

Structure: one :class:`amaranth.lib.memory.Memory` (``max_layers`` x ACT entries, all 0 after
reset) with one
write port and ``lanes`` synchronous read ports (an FPGA flow typically builds one copy of the
table per pair of read ports).

Throughput one beat per cycle; latency one cycle (the table read ports are the output
register: their ``en`` is the pipeline's advance, so a stalled output holds its beat).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden import contract
from hw import arith
from hw.arith import bits_for
from hw.engine import (LAYER, Engine, EngineRegisters, Setting, finish_on_tokens, layer_part,
                       token_gate)
from hw.linear_engine import activation_layout

__all__ = ["REGISTERS", "TABLE_DEPTH", "gelu_load_layout", "GELU"]

#: Entries of the GELU table: one per ACT input value.
TABLE_DEPTH = contract.ACT.max - contract.ACT.min + 1

#: The GELU stage's registers (:mod:`hw.engine`).
REGISTERS = EngineRegisters(
    "gelu",
    settings=[Setting("tokens", doc="tokens in the run (DONE once all have left)"), LAYER],
    errors=(("range", "an input value outside int8 (its saturated value was looked up)"),),
    counters=(("tokens_out", "tokens emitted"),),
    pulses=(("reset_load", "restart the layer's table load address at entry 0"),))


def gelu_load_layout(config):
    """One ``t_load`` beat: one table entry (``config`` is for the family's uniformity)."""
    return data.StructLayout({"data": arith.shape_of(contract.ACT)})


class GELU(Engine):
    """GELU table lookup on every lane of :func:`hw.linear_engine.activation_layout` beats.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        ``lanes`` (table read ports, one per lane).

    Attributes
    ----------
    i : ``In(stream.Signature(activation_layout(config)))``
        Input beats; each lane an ACT value in the int16 field.
    o : ``Out(stream.Signature(activation_layout(config)))``
        Output beats: the table entries of the input lanes, other fields copied.
    t_load : ``In(stream.Signature(gelu_load_layout(config)))``
        Table entries in order, while not running (see the module docstring).
    csr : ``In(RegisterSignature)``
        Registers :data:`REGISTERS`.

    Errors: ``range`` (an input lane outside ACT; its saturated value is looked up).
    ``config``: a ``layer`` setting at or past ``max_layers`` (any ``tokens`` is valid).

    Throughput one beat per cycle, latency one cycle, under any back-pressure.
    """

    registers = REGISTERS

    def __init__(self, config):
        layout = activation_layout(config)
        super().__init__(config, {
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
            "t_load": In(stream.Signature(gelu_load_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        base, layer_ok = layer_part(m, ctl, self._config, TABLE_DEPTH)
        m.submodules.table = table = Memory(shape=arith.shape_of(contract.ACT),
                                            depth=self._config.max_layers * TABLE_DEPTH, init=[])
        self._loading(m, ctl, table, base, layer_ok)

        i, o = self.i, self.o
        advance = ~o.valid | o.ready
        take = i.valid & i.ready
        m.d.comb += i.ready.eq(token_gate(m, ctl, take & i.payload.last) & advance)

        out_of_range = Signal()
        for lane in range(self._config.lanes):
            x = i.payload.data[lane]
            rp = table.read_port()
            m.d.comb += [rp.en.eq(advance),
                         rp.addr.eq(base + (arith.saturate(x, contract.ACT) - contract.ACT.min)
                                    [:bits_for(TABLE_DEPTH)]),
                         o.payload.data[lane].eq(rp.data)]
            out_of_range = out_of_range | ~arith.fits(x, contract.ACT)
        m.d.comb += ctl.raise_error["range"].eq(take & out_of_range)

        with m.If(advance):
            m.d.sync += o.valid.eq(take)
            for name, _ in o.payload.shape():
                if name != "data":
                    m.d.sync += o.payload[name].eq(i.payload[name])
        m.d.comb += ctl.config_ok.eq(layer_ok)
        finish_on_tokens(m, ctl, o)
        return m

    def _loading(self, m, ctl, table, base, layer_ok):
        """The table write port, fed by ``t_load`` while not running, into the ``layer``
        setting's part."""
        addr = Signal(range(TABLE_DEPTH + 1))
        wp = table.write_port()
        load = self.t_load
        take = load.valid & load.ready
        m.d.comb += [load.ready.eq(~ctl.running), wp.addr.eq(base + addr[:bits_for(TABLE_DEPTH)]),
                     wp.data.eq(load.payload.data),
                     wp.en.eq(take & (addr < TABLE_DEPTH) & layer_ok)]
        with m.If(ctl.pulse.reset_load):
            m.d.sync += addr.eq(0)
        with m.Elif(take & (addr < TABLE_DEPTH)):
            m.d.sync += addr.eq(addr + 1)

