"""The four kinds of property of issue 16, as builders of ``prop(harness, m)`` functions.

* :func:`stream_rules`: a stream the component gives never withdraws ``valid`` before
  ``ready`` and holds its payload while it waits.
* :func:`conservation`: a counting property of units in against units out (beats, or framed
  blocks): never more out than in, never more than ``capacity`` inside.
* :func:`response`: with every output stream always ready (a pin of the case), a unit inside
  the component leaves within ``bound`` cycles.
* :func:`sticky`: an error flag, once raised, stays raised until its clear.

Each unit function takes the harness and returns a value: how many units moved this cycle.
Properties use no multiplication: the control checks cut every multiplier into a free value.
A ``guard`` (``guard(h, m)``, a value) turns a property off in the cycles it is low, for
example from the first error flag on (:func:`no_error_yet`): the input was malformed on
purpose, and the flag's own property covers that case.
"""

from amaranth.hdl import Assert, Assume, Const, Signal, signed

__all__ = ["stream_rules", "stream_rules_inside", "no_error_yet", "conservation", "response", "sticky", "fires", "fires_last"]


def no_error_yet(flag=lambda h: h.dut.error):
    """Guard: ``flag`` has not been high since reset (a clear does not turn the property
    back on: what the component holds after malformed input is not conserved)."""
    def guard(h, m):
        seen = Signal()
        with m.If(flag(h)):
            m.d.sync += seen.eq(1)
        return ~seen & ~flag(h)
    return guard


def fires(path):
    """Units: the beats taken on stream ``path``."""
    return lambda h: h.stream[path].fire


def fires_last(path, field="last"):
    """Units: the framed blocks on stream ``path`` (beats with ``field`` set)."""
    return lambda h: h.stream[path].fire & getattr(h.stream[path].port.payload, field)


def stream_rules(path, when=None):
    """``path``'s valid and payload are held from a cycle with valid and not ready until the
    beat is taken (only for waits that begin in a cycle with ``when(h, m)``, if given)."""
    def prop(h, m):
        s = h.stream[path].port
        with m.If(h.waited(m, s, when(h, m) if when else 1)):
            m.d.comb += [Assert(s.valid), Assert(h.held(s))]
    return prop


def stream_rules_inside(path):
    """:func:`stream_rules` for the beats of ``path`` that follow a taken beat without
    ``last``: the rules inside an accumulation."""
    def inside(h, m):
        s = h.stream[path]
        open_ = Signal()
        with m.If(s.fire):
            m.d.sync += open_.eq(~s.port.payload.last)
        return open_
    return stream_rules(path, inside)


def _ledger(h, m, units_in, units_out, bits=8):
    """Units inside the component: in minus out, counted since reset."""
    inside = Signal(signed(bits))
    m.d.sync += inside.eq(inside + units_in(h) - units_out(h))
    return inside


def conservation(units_in, units_out, capacity, guard=None):
    """``0 <= in - out <= capacity`` at every step (while ``guard``)."""
    def prop(h, m):
        inside = _ledger(h, m, units_in, units_out)
        ok = guard(h, m) if guard else 1
        with m.If(ok):
            m.d.comb += [Assert(inside >= 0), Assert(inside <= capacity)]
    return prop


def response(units_in, units_out, bound, guard=None, *, ready=()):
    """With the output streams ``ready`` always ready, no unit waits inside more than
    ``bound`` cycles without one leaving (while ``guard``)."""
    def prop(h, m):
        for path in ready:
            m.d.comb += Assume(h.stream[path].port.ready)
        inside = _ledger(h, m, units_in, units_out)
        age = Signal(range(bound + 2))
        with m.If((inside <= 0) | (units_out(h) != 0)):
            m.d.sync += age.eq(0)
        with m.Elif(age <= bound):
            m.d.sync += age.eq(age + 1)
        ok = guard(h, m) if guard else 1
        with m.If(ok):
            m.d.comb += Assert(age <= bound)
    return prop


def sticky(flag, clear=None):
    """``flag(h)`` stays high from the cycle after it rose until a cycle with ``clear(h)``."""
    def prop(h, m):
        was = h.past(m, flag(h))
        cleared = h.past(m, clear(h)) if clear else Const(0)
        with m.If(h.started & was & ~cleared):
            m.d.comb += Assert(flag(h))
    return prop
