"""A pipeline of stages sharing one PE array.

::

    i -> [gate] -> stage 0 -> stage 1 -> ... -> stage n-1 -> o
                      |          |                  |
                      `---- PEArbiter (one port per PE client) ---- PEArray

A **stage** is a ``wiring.Component`` with

* ``i`` (``In(stream)``) and ``o`` (``Out(stream)``): its activation beats; stage ``k``'s ``o``
  payload layout must equal stage ``k + 1``'s ``i`` layout (between the projection and the
  attention stage it is :func:`hw.linear_engine.activation_layout`);
* optionally ``pe`` (``Out(``:class:`hw.pe_array.PEClientSignature` ``)``): it is a client of
  the PE array and gets a port of the arbiter (one client alone is wired to the array
  directly);
* optionally ``csr`` (``In(``:class:`hw.engine.RegisterSignature` ``)``) with a ``registers``
  attribute (:class:`hw.engine.EngineRegisters`): it gets a register window;
* optionally ``credit`` (``Out(``:class:`CreditSignature` ``)``): it holds whole sequences in
  ``slots`` buffers, and the pipeline admits the input tokens of sequence ``s`` only once
  sequence ``s - slots`` has left that stage (:class:`SequenceGate`). Without this a stage
  before it could fill the PE array's output with results nobody can take: a deadlock;
* any other ports (loading streams, masks): exposed as ``<stage name>.<port>`` (Verilog
  ``<stage>__<port>__valid`` ...).

Register windows: every stage with registers gets a window of ``2 ** window_bits`` addresses
(the largest stage's), in stage order; :meth:`Pipeline.addr` and :attr:`Pipeline.windows` give
the host's view.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from hw.arith import bits_for
from hw.engine import Engine, EngineRegisters, RegisterSignature, Setting
from hw.pe_arbiter import PEArbiter
from hw.pe_array import PEArray

__all__ = ["CreditSignature", "SequenceGate", "Pipeline", "PassThrough"]

_RESERVED = ("i", "o", "pe", "csr", "credit")


class CreditSignature(wiring.Signature):
    """Sequence credit of a stage with ``slots`` sequence buffers (seen from the stage):
    ``released`` counts the sequences that left their slot since ``restart``; ``tokens`` is the
    stage's tokens per sequence."""

    def __init__(self, config, slots=2):
        self.slots = slots
        super().__init__({"released": Out(16), "tokens": Out(range(config.max_tokens + 1)),
                          "restart": Out(1)})

    def __eq__(self, other):
        return super().__eq__(other) and self.slots == getattr(other, "slots", None)


def _payload(stage, port):
    return stage.signature.members[port].signature.members["payload"].shape


class SequenceGate(wiring.Component):
    """Admits the beats of sequence ``s`` (``credit.tokens`` tokens, each ending with ``last``)
    only while fewer than ``slots`` admitted sequences have not been released.

    Combinational (no added cycle); counts restart with ``credit.restart``.
    """

    def __init__(self, layout, credit):
        self._slots = credit.slots
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout)),
                          "credit": In(credit)})

    def elaborate(self, platform):
        m = Module()
        tok_in = Signal.like(self.credit.tokens)
        seq_in = Signal(16)
        allow = Signal()
        m.d.comb += allow.eq((seq_in - self.credit.released)[:16] < self._slots)
        m.d.comb += [self.o.valid.eq(self.i.valid & allow), self.o.payload.eq(self.i.payload),
                     self.i.ready.eq(self.o.ready & allow)]
        with m.If(self.i.valid & self.i.ready & self.i.payload.last):
            with m.If(tok_in == self.credit.tokens - 1):
                m.d.sync += [tok_in.eq(0), seq_in.eq(seq_in + 1)]
            with m.Else():
                m.d.sync += tok_in.eq(tok_in + 1)
        with m.If(self.credit.restart):
            m.d.sync += [tok_in.eq(0), seq_in.eq(0)]
        return m


class Pipeline(wiring.Component):
    """Stages chained by their activation streams, sharing one :class:`hw.pe_array.PEArray`.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    stages : sequence of (name, stage)
        See the module docstring.

    Attributes
    ----------
    i, o : the first stage's input and the last stage's output streams.
    csr : ``In(RegisterSignature)``: the register windows of every stage.
    <name> : the extra ports of stage ``name``.
    """

    def __init__(self, config, stages):
        stages = list(stages)
        if not stages:
            raise ValueError("stages must be a non-empty list of (name, stage), not {!r}"
                             .format(stages))
        names = [n for n, _ in stages]
        for n in names:
            if not isinstance(n, str) or not n.isidentifier() or n in _RESERVED:
                raise ValueError("stage names must be identifiers other than {}, not {!r}"
                                 .format(", ".join(_RESERVED), n))
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique, not {!r}".format(names))
        for (n0, s0), (n1, s1) in zip(stages, stages[1:]):
            if _payload(s1, "i") != _payload(s0, "o"):
                raise ValueError("stage {!r} input layout must be stage {!r}'s output layout "
                                 "{!r}, not {!r}".format(n1, n0, _payload(s0, "o"),
                                                         _payload(s1, "i")))
        self._config = config
        self._stages = stages
        with_regs = [(n, s) for n, s in stages if "csr" in s.signature.members]
        self.window_bits = max((s.registers.addr_bits for _, s in with_regs), default=1)
        #: Stage name -> (base address, :class:`hw.engine.EngineRegisters`).
        self.windows = {n: (k << self.window_bits, s.registers)
                        for k, (n, s) in enumerate(with_regs)}
        members = {"i": In(stream.Signature(_payload(stages[0][1], "i"))),
                   "o": Out(stream.Signature(_payload(stages[-1][1], "o"))),
                   "csr": In(RegisterSignature(self.window_bits + bits_for(len(with_regs))))}
        for n, s in stages:
            extra = {p: mem for p, mem in s.signature.members.items() if p not in _RESERVED}
            if extra:
                members[n] = Out(wiring.Signature(extra))
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def addr(self, stage, register):
        """Address of ``register`` of ``stage`` on the pipeline's register port."""
        try:
            base, regs = self.windows[stage]
        except KeyError:
            raise ValueError("No stage with registers named {!r}; choose one of {}"
                             .format(stage, ", ".join(self.windows))) from None
        return base + regs.addr(register)

    def elaborate(self, platform):
        m = Module()
        stages = self._stages
        for n, s in stages:
            m.submodules[n] = s
            for p in s.signature.members:
                if p not in _RESERVED:
                    connect(m, wiring.flipped(getattr(getattr(self, n), p)), getattr(s, p))

        # Activation chain, with a sequence gate before the first stage that holds sequences.
        gated = next((s for _, s in stages if "credit" in s.signature.members), None)
        head = wiring.flipped(self.i)
        if gated is not None:
            m.submodules.gate = gate = SequenceGate(_payload(stages[0][1], "i"),
                                                    gated.signature.members["credit"].signature)
            connect(m, gated.credit, gate.credit)
            connect(m, head, gate.i)
            head = gate.o
        connect(m, head, stages[0][1].i)
        for (_, s0), (_, s1) in zip(stages, stages[1:]):
            connect(m, s0.o, s1.i)
        connect(m, stages[-1][1].o, wiring.flipped(self.o))

        # PE clients share one array.
        clients = [s.pe for _, s in stages if "pe" in s.signature.members]
        if clients:
            m.submodules.pe = pe = PEArray(self._config)
            if len(clients) == 1:
                array = clients[0]
            else:
                m.submodules.arbiter = arb = PEArbiter(self._config, ports=len(clients))
                for k, c in enumerate(clients):
                    connect(m, c, arb.clients[k])
                array = arb.array
            connect(m, array.req, pe.i)
            connect(m, pe.o, array.res)

        # Register windows: the high address bits pick the stage; reads show one cycle later.
        wb = self.window_bits
        sel = self.csr.addr[wb:]
        sel_d = Signal.like(sel)
        m.d.sync += sel_d.eq(sel)
        for k, (n, _) in enumerate(self.windows.items()):
            port = getattr(m.submodules, n).csr
            m.d.comb += [port.addr.eq(self.csr.addr[:wb]), port.w_data.eq(self.csr.w_data),
                         port.w_en.eq(self.csr.w_en & (sel == k))]
            with m.If(sel_d == k):
                m.d.comb += self.csr.r_data.eq(port.r_data)
        return m


class PassThrough(Engine):
    """A trivial stage: beats of ``layout`` pass through one register stage, counted.

    Shows what a stage needs: activation ports and an engine declaration
    (:data:`PassThrough.registers`: setting ``beats``, counter ``beats_out``; DONE once
    ``beats_out`` reaches ``beats``; beats wait until START). Throughput one beat per cycle,
    latency one cycle.
    """

    registers = EngineRegisters(
        "pass_through", settings=[Setting("beats", doc="beats of the run (DONE once all passed)")],
        counters=(("beats_out", "beats passed on"),))

    def __init__(self, layout):
        super().__init__(None, {"i": In(stream.Signature(layout)),
                                "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        ctl = self.control(m)
        fire_o = self.o.valid & self.o.ready
        m.d.comb += [self.i.ready.eq(ctl.running & (~self.o.valid | self.o.ready)),
                     ctl.config_ok.eq(1),
                     ctl.count.beats_out.eq(fire_o),
                     ctl.finished.eq(ctl.counters.beats_out == ctl.settings.beats)]
        with m.If(fire_o):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(self.i.payload)]
        return m
