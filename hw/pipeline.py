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
* optionally ``skip`` (``In(stream)``): the second operand of a join (a residual add), fed by
  a *skip path* (``skips``): a copy of the input of an earlier stage, buffered in a FIFO;
* any other ports (loading streams, masks): exposed as ``<stage name>.<port>`` (Verilog
  ``<stage>__<port>__valid`` ...), unless a *link* joins them inside: ``links`` lists
  ``(stage, port, stage, port)``, an ``Out`` port of one stage feeding an ``In`` port of
  another (the on-chip predictor's masks into the attention engine).

A **side** component (``sides``) sits beside the activation chain: it gets a register window
(after the stages') and its ports, ``i`` and ``o`` included, are linked or exposed like a
stage's extra ports (the whole model's token buffer, fed by one stage and feeding two
others). A side may not be a PE client or hold sequences.

Skip paths: ``(fork, join, depth)`` copies every beat entering stage ``fork`` into a FIFO of
``depth`` beats that feeds ``join.skip`` (:class:`Tee`). A beat enters ``fork`` only when the
FIFO has room, so ``depth`` must hold every beat between the two that ``join`` needs before
it can take the oldest one (a whole sequence across an attention stage): otherwise the
pipeline deadlocks.

Result reservation: with two or more PE clients, a client whose output waits on another stage
(a linear engine whose ``o`` feeds a stage that needs the array, the attention engine whose
``o`` waits for a transposing buffer that the next projection drains) would leave result rows
at the head of the array's output that nobody takes, and stop every client: a deadlock. So
every client of a shared array gets a :class:`ResultReserve`: it opens an accumulation only when
its result FIFO has room for the ``rows`` rows, and the array's output never waits.

Register windows: every stage with registers gets a window of ``2 ** window_bits`` addresses
(the largest stage's), in stage order; :meth:`Pipeline.addr` and :attr:`Pipeline.windows` give
the host's view.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from hw.arith import bits_for
from hw.engine import Engine, EngineRegisters, RegisterSignature, Setting
from hw.pe_arbiter import PEArbiter
from hw.pe_array import PEArray, PEClientSignature
from hw.register_slice import RegisterSlice

__all__ = ["CreditSignature", "SequenceGate", "Tee", "ResultReserve", "Pipeline", "PassThrough"]

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


def _hidden_ports(name, stages):
    """The ports of component ``name`` that the pipeline wires itself: a stage's chain ports
    (``i``, ``o``, ``pe``, ``csr``, ``credit``), a side's ``csr`` only."""
    return set(_RESERVED) if name in {n for n, _ in stages} else {"csr"}


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


class Tee(wiring.Component):
    """Copies a stream: a beat of ``i`` leaves on ``o`` and on ``copy`` in the same cycle, when
    both are ready. Combinational."""

    def __init__(self, layout):
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout)),
                          "copy": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        both = self.o.ready & self.copy.ready
        m.d.comb += [self.o.payload.eq(self.i.payload), self.copy.payload.eq(self.i.payload),
                     self.o.valid.eq(self.i.valid & self.copy.ready),
                     self.copy.valid.eq(self.i.valid & self.o.ready), self.i.ready.eq(both)]
        return m


class ResultReserve(wiring.Component):
    """Between a PE client and its arbiter port: a result FIFO of ``accumulations * rows``
    rows, and an accumulation opens (its first beat passes) only when ``rows`` of them are
    free, so the rows the array returns are always taken at once.

    ``client`` faces the client, ``array`` the arbiter. Beats reach the arbiter through a
    :class:`hw.register_slice.RegisterSlice` (one cycle; a beat a cycle): the client's state
    sees a registered ``ready``, not the arbiter's grant and the array's stall, which through
    the attention issuer's group registers (2 x 2 048 loads behind one handshake) were the
    ULX3S run-through's widest failing path (18.9 ns by :mod:`boards.timing`). An
    accumulation's beats still follow each other without outside waits if the client sends
    them so. Results reach the client through the FIFO (one cycle more).
    """

    def __init__(self, config, accumulations=2):
        self._rows = config.rows
        self._depth = accumulations * config.rows
        super().__init__({"client": In(PEClientSignature(config)),
                          "array": Out(PEClientSignature(config))})

    def elaborate(self, platform):
        m = Module()
        rows, depth = self._rows, self._depth
        res, up = self.client.res, self.array
        m.submodules.request = request = RegisterSlice(self.client.req.payload.shape())
        connect(m, wiring.flipped(self.client.req), request.i)
        req = request.o
        layout = res.payload.shape()
        m.submodules.results = q = fifo.SyncFIFOBuffered(width=layout.size, depth=depth)
        free = Signal(range(depth + 1), init=depth)
        inside = Signal()                       # between an accumulation's first and last beat
        allow = inside | (free >= rows)
        m.d.comb += [up.req.valid.eq(req.valid & allow), up.req.payload.eq(req.payload),
                     req.ready.eq(up.req.ready & allow)]
        fire = up.req.valid & up.req.ready
        with m.If(fire):
            m.d.sync += inside.eq(~req.payload.last)
        taken = res.valid & res.ready
        m.d.sync += free.eq(free - Mux(fire & ~inside, rows, 0) + taken)
        m.d.comb += [q.w_data.eq(up.res.payload), q.w_en.eq(up.res.valid),
                     up.res.ready.eq(q.w_rdy),
                     res.valid.eq(q.r_rdy), res.payload.eq(q.r_data), q.r_en.eq(res.ready)]
        return m


class Pipeline(wiring.Component):
    """Stages chained by their activation streams, sharing one :class:`hw.pe_array.PEArray`.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    stages : sequence of (name, stage)
        See the module docstring.
    skips : sequence of (fork, join, depth)
        Skip paths (see the module docstring).
    links : sequence of (stage, port, stage, port)
        Ports joined inside the pipeline (see the module docstring); a side may be named.
    sides : sequence of (name, component)
        Components beside the chain (see the module docstring).

    Attributes
    ----------
    i, o : the first stage's input and the last stage's output streams.
    csr : ``In(RegisterSignature)``: the register windows of every stage.
    <name> : the extra ports of stage ``name``.
    """

    def __init__(self, config, stages, *, skips=(), links=(), sides=()):
        stages, sides = list(stages), list(sides)
        if not stages:
            raise ValueError("stages must be a non-empty list of (name, stage), not {!r}"
                             .format(stages))
        for n, s in sides:
            if {"pe", "credit", "skip"} & set(s.signature.members):
                raise ValueError("side {!r} must not have a pe, credit or skip port".format(n))
        names = [n for n, _ in stages + sides]
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
        self._skips = self._check_skips(stages, skips)
        self._links = self._check_links(stages, sides, links)
        linked = {(a, p) for a, p, _, _ in self._links} | {(b, q) for _, _, b, q in self._links}
        self._config = config
        self._stages, self._sides = stages, sides
        with_regs = [(n, s) for n, s in stages + sides if "csr" in s.signature.members]
        self.window_bits = max((s.registers.addr_bits for _, s in with_regs), default=1)
        #: Stage name -> (base address, :class:`hw.engine.EngineRegisters`).
        self.windows = {n: (k << self.window_bits, s.registers)
                        for k, (n, s) in enumerate(with_regs)}
        members = {"i": In(stream.Signature(_payload(stages[0][1], "i"))),
                   "o": Out(stream.Signature(_payload(stages[-1][1], "o"))),
                   "csr": In(RegisterSignature(self.window_bits + bits_for(len(with_regs))))}
        joins = {j for _, j, _ in self._skips}
        self._extra = {}
        for n, s in stages + sides:
            hidden = _hidden_ports(n, stages) | ({"skip"} if n in joins else set())
            extra = {p: mem for p, mem in s.signature.members.items()
                     if p not in hidden and (n, p) not in linked}
            self._extra[n] = tuple(extra)
            if extra:
                members[n] = Out(wiring.Signature(extra))
        super().__init__(members)

    @staticmethod
    def _check_skips(stages, skips):
        index = {n: k for k, (n, _) in enumerate(stages)}
        out = []
        for skip in skips:
            fork, join, depth = skip
            if fork not in index or join not in index or index[fork] >= index[join]:
                raise ValueError("a skip path must name an earlier stage and a later one, not "
                                 "{!r}".format(skip))
            js = stages[index[join]][1]
            if "skip" not in js.signature.members:
                raise ValueError("stage {!r} has no skip port".format(join))
            if _payload(js, "skip") != _payload(stages[index[fork]][1], "i"):
                raise ValueError("stage {!r}'s skip layout must be stage {!r}'s input layout"
                                 .format(join, fork))
            if not isinstance(depth, int) or depth < 1:
                raise ValueError("skip depth must be a positive integer, not {!r}".format(depth))
            out.append((fork, join, depth))
        return out

    @staticmethod
    def _check_links(stages, sides, links):
        by_name = dict(stages + sides)
        # A stage's chain ports are the pipeline's; a side's i and o are ordinary ports.
        reserved = {n: _hidden_ports(n, stages) for n in by_name}
        out = []
        for link in links:
            if len(link) != 4 or link[0] not in by_name or link[2] not in by_name:
                raise ValueError("a link must be (stage, port, stage, port) of two stages, not "
                                 "{!r}".format(link))
            a, p, b, q = link
            ma, mb = by_name[a].signature.members, by_name[b].signature.members
            if p not in ma or q not in mb or p in reserved[a] or q in reserved[b] \
                    or ma[p].flow != Out or mb[q].flow != In \
                    or ma[p].signature != mb[q].signature.flip():
                raise ValueError("link {!r} must join an Out port to a matching In port"
                                 .format(link))
            out.append(tuple(link))
        return out

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
        for n, s in stages + self._sides:
            m.submodules[n] = s
            for p in self._extra[n]:
                connect(m, wiring.flipped(getattr(getattr(self, n), p)), getattr(s, p))
        by_name = dict(stages + self._sides)
        for a, p, b, q in self._links:
            connect(m, getattr(by_name[a], p), getattr(by_name[b], q))

        # Activation chain, with a sequence gate before the first stage that holds sequences.
        gated = next((s for _, s in stages if "credit" in s.signature.members), None)
        head = wiring.flipped(self.i)
        if gated is not None:
            m.submodules.gate = gate = SequenceGate(_payload(stages[0][1], "i"),
                                                    gated.signature.members["credit"].signature)
            connect(m, gated.credit, gate.credit)
            connect(m, head, gate.i)
            head = gate.o
        feeds = [head] + [s0.o for _, s0 in stages[:-1]]
        for (n, s), feed in zip(stages, feeds):
            for f, j, depth in self._skips:
                if f == n:
                    feed = self._fork(m, feed, dict(stages)[j], j, depth)
            connect(m, feed, s.i)
        connect(m, stages[-1][1].o, wiring.flipped(self.o))

        # PE clients share one array; see the module docstring for ResultReserve.
        clients = [(n, s.pe) for n, s in stages if "pe" in s.signature.members]
        if len(clients) > 1:
            for k, (n, pe) in enumerate(clients):
                m.submodules[n + "_reserve"] = rr = ResultReserve(self._config)
                connect(m, pe, rr.client)
                clients[k] = (n, rr.array)
        clients = [pe for _, pe in clients]
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

        return self._windows(m)

    def _fork(self, m, feed, join_stage, join, depth):
        """A :class:`Tee` on ``feed`` whose copy fills the skip FIFO of ``join``; returns the
        stream that goes on."""
        layout = join_stage.signature.members["skip"].signature.members["payload"].shape
        tee = m.submodules[join + "_tee"] = Tee(layout)
        q = m.submodules[join + "_skip"] = fifo.SyncFIFOBuffered(
            width=data.Layout.cast(layout).size, depth=depth)
        connect(m, feed, tee.i)
        m.d.comb += [q.w_data.eq(tee.copy.payload), q.w_en.eq(tee.copy.valid),
                     tee.copy.ready.eq(q.w_rdy),
                     join_stage.skip.valid.eq(q.r_rdy), join_stage.skip.payload.eq(q.r_data),
                     q.r_en.eq(join_stage.skip.ready)]
        return tee.o

    def _windows(self, m):
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
