"""A formal harness around one component: free inputs that follow the stream rules, and the
properties of issue 16 as assertions.

:class:`Harness` instantiates the component under test and walks its signature. Every stream
the component *takes* is driven by the solver (``AnySeq`` valid and payload) under the
assumption that it follows the ``lib.stream`` rules; every stream it *gives* has a free ``ready``
and, when the property asks for it, is checked against those rules. Every other input port is
free (``AnySeq``) unless the case pins it (:attr:`Harness.pins`): a constant, ``"const"`` (any
value, held for the whole trace), or ``pin(harness, m)``, a value. Reset is high in the initial
state only.

A property is a function ``prop(h, m)`` that adds ``Assert`` statements (and any assumption it
needs) to the harness module ``m``; :mod:`sim.formal.properties` has the four kinds. A
*mutant* breaks the component on purpose, by appending statements to its elaborated module
(later assignments win in Amaranth), so that the property's proof can be shown to fail.
"""

import contextlib

from amaranth.asserts import AnyConst, AnySeq, Initial
from amaranth.hdl import Assume, Const, Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Flow

__all__ = ["Harness", "Mutated", "Stream", "streams_of", "internal"]


class Stream:
    """One stream port of the component: ``path`` (a name like ``clients[1].req``), its
    interface ``port`` (``valid``, ``ready``, ``payload``), and ``taken`` (the component
    consumes it) or not (the component produces it)."""

    def __init__(self, path, port, taken):
        self.path, self.port, self.taken = path, port, taken

    @property
    def fire(self):
        return self.port.valid & self.port.ready

    def __repr__(self):
        return "Stream({!r}, {})".format(self.path, "in" if self.taken else "out")


def _walk(signature, obj, path):
    # A member's signature is already flipped for an ``In`` member, so each member's own flow
    # says which side drives it.
    for name, member in signature.members.items():
        value = getattr(obj, name)
        sub = "{}.{}".format(path, name) if path else name
        items = [(sub, value)]
        for _ in member.dimensions:
            items = [("{}[{}]".format(p, n), v[n]) for p, v in items for n in range(len(v))]
        taken = member.flow == Flow.In
        for p, v in items:
            if not member.is_signature:
                yield "port", p, v, taken
            elif isinstance(member.signature, stream.Signature):
                yield "stream", p, v, taken
            else:
                yield from _walk(member.signature, v, p)


def streams_of(component):
    """The component's streams (:class:`Stream`), in signature order."""
    return [Stream(p, v, taken) for kind, p, v, taken in
            _walk(component.signature, component, "") if kind == "stream"]


class Mutated(Elaboratable):
    """``component`` broken by ``mutant`` (:class:`sim.formal.mutants.Mutant`)."""

    def __init__(self, component, mutant):
        self.component, self.mutant = component, mutant
        component._MustUse__silence = True    # elaborated here, not added as a submodule

    def elaborate(self, platform):
        with self.mutant.context() if self.mutant.context else contextlib.nullcontext():
            m = self.component.elaborate(platform)
        if self.mutant.patch:
            self.mutant.patch(self.component, m)
        return m


class Harness(wiring.Component):
    """The component ``dut`` with free inputs and the given properties.

    Parameters
    ----------
    dut : ``wiring.Component``
    props : iterable of ``prop(harness, m)``
    pins : dict
        ``{port path: value}`` for input ports that are not free: an int, ``"const"``, or
        ``pin(harness, m)`` (a value).
    mutant : :class:`sim.formal.mutants.Mutant` or ``None``
    """

    def __init__(self, dut, props=(), *, pins=None, mutant=None):
        super().__init__({})   # a closed system: every input is driven here
        self.dut = dut
        self.props = list(props)
        self.pins = dict(pins or {})
        self.mutant = mutant
        self.streams = streams_of(dut)
        self.ports = {p: (v, is_in) for kind, p, v, is_in in
                      _walk(dut.signature, dut, "") if kind == "port"}
        inputs = {p for p, (_, is_in) in self.ports.items() if is_in}
        unknown = set(self.pins) - inputs - {s.path + ".ready" for s in self.streams
                                             if not s.taken}
        if unknown:
            raise ValueError("pins must name input ports of the component, not {!r}"
                             .format(sorted(unknown)))
        self.stream = {s.path: s for s in self.streams}
        #: High from the second step on: ``past`` values are meaningful.
        self.started = Signal()

    def past(self, m, value, name=None):
        """``value`` one step ago (its reset value in the initial step)."""
        value = Value.cast(value)
        reg = Signal(value.shape(), name=name)
        m.d.sync += reg.eq(value)
        return reg

    def waited(self, m, port, when=1):
        """High when ``port`` (a stream) had a beat waiting (valid, not ready) in the step
        before, in a step with ``when``; :meth:`held` is then what the stream rules require."""
        self._held = getattr(self, "_held", {})
        self._held[id(port)] = self.past(m, Value.cast(port.payload))
        return self.started & self.past(m, port.valid & ~port.ready & when)

    def held(self, port):
        """``valid`` still high and the payload unchanged since the step :meth:`waited` saw."""
        return port.valid & (Value.cast(port.payload) == self._held[id(port)])

    def _drive(self, m, path, port):
        pin = self.pins.get(path)
        port = Value.cast(port)
        if pin is None:
            m.d.comb += port.eq(AnySeq(port.shape()))
        elif isinstance(pin, str):
            assert pin == "const", pin
            m.d.comb += port.eq(AnyConst(port.shape()))
        elif callable(pin):
            m.d.comb += port.eq(pin(self, m))
        else:
            m.d.comb += port.eq(Const(pin, port.shape()))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = Mutated(self.dut, self.mutant) if self.mutant else self.dut
        m.d.comb += Assume(ResetSignal() == Initial())
        m.d.sync += self.started.eq(1)
        for path, (port, is_in) in self.ports.items():
            if is_in:
                self._drive(m, path, port)
        for s in self.streams:
            if s.taken:
                payload = Value.cast(s.port.payload)
                m.d.comb += [s.port.valid.eq(AnySeq(1)), payload.eq(AnySeq(len(payload)))]
                # The environment follows the stream rules: a beat waits until taken.
                with m.If(self.waited(m, s.port)):
                    m.d.comb += Assume(self.held(s.port))
            else:
                self._drive(m, s.path + ".ready", s.port.ready)
        for prop in self.props:
            prop(self, m)
        return m


def internal(m, name):
    """The signal called ``name`` that the elaborated module ``m`` drives (for mutants that
    break a component inside)."""
    found = [sig for sig in m._driving if sig.name == name]
    if len(found) != 1:
        raise ValueError("the module drives {} signals named {!r}, not one"
                         .format(len(found), name))
    return found[0]
