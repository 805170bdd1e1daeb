"""The engine base: an engine's settings, error bits and counters, declared once.

An engine (a stage of :class:`hw.pipeline.Pipeline`) describes its host-visible state with one
:class:`EngineRegisters` declaration. Everything else derives from it, so no register bit is
written down twice:

* the **address map**: ``CTRL`` at 0, ``STATUS`` at 1, the settings in declaration order, then
  the counters, ``cycles`` first (:meth:`EngineRegisters.addr`);
* the **CTRL layout** (:attr:`EngineRegisters.ctrl_layout`): write-1 pulses ``start``,
  ``clear_error``, ``stop``, then the engine's own pulses;
* the **STATUS layout** (:attr:`EngineRegisters.status_layout`): ``running``, ``done``,
  ``error`` (any error bit), five reserved bits, then one sticky bit per error, ``config``
  first (a START refused: an out-of-range setting, or the engine already running);
* the **RTL**: :class:`EngineControl`, the register file, start / done / configuration check
  and counters, which every engine instantiates;
* the **host view**: :meth:`EngineRegisters.ctrl` (pulse names -> CTRL value),
  :meth:`EngineRegisters.status` (STATUS value -> a ``data.Const`` with named fields), used by
  every driver (:mod:`sim.driver`).

Register port protocol (:class:`RegisterSignature`): a write (``w_en``, ``addr``, ``w_data``)
takes effect at the clock edge; ``r_data`` shows the register at ``addr`` one cycle later;
unmapped addresses read 0.
"""

from dataclasses import dataclass, field

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out, connect

from hw.arith import bits_for, log2_exact

__all__ = ["Setting", "EngineRegisters", "RegisterSignature", "EngineControl", "Engine",
           "LAYER", "layer_part", "token_width", "token_gate", "finish_on_tokens", "COUNTER_BITS",
           "STATUS_ERROR_OFFSET"]

#: Width of every counter register.
COUNTER_BITS = 32
#: Bit of STATUS where the per-error bits begin.
STATUS_ERROR_OFFSET = 8


@dataclass(frozen=True)
class Setting:
    """A read-write register: ``shape`` (an int width or a ``lib.data`` layout), ``init`` (an
    int, or a dict for a struct layout)."""
    name: str
    shape: object = 32
    init: object = 0
    doc: str = field(default="", compare=False)


def _names(what, names):
    names = tuple(names)
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise ValueError("{} names must be identifiers, not {!r}".format(what, n))
    if len(set(names)) != len(names):
        raise ValueError("{} names must be unique, not {!r}".format(what, names))
    return names


def _documented(items):
    """``(names, {name: doc})`` of items given as names or ``(name, doc)`` pairs."""
    pairs = [(i, "") if isinstance(i, str) else tuple(i) for i in items]
    return tuple(n for n, _ in pairs), {n: d for n, d in pairs if d}


class EngineRegisters:
    """The register declaration of one engine (see the module docstring).

    Parameters
    ----------
    name : str
        The engine kind (used in messages).
    settings : sequence of :class:`Setting`
    errors : sequence of str or (str, doc)
        Error bits besides ``config`` (which every engine has), in STATUS order.
    counters : sequence of str or (str, doc)
        Counters besides ``cycles`` (which every engine has): 32-bit, cleared by START,
        advanced only while running.
    pulses : sequence of str or (str, doc)
        CTRL pulses besides ``start``, ``clear_error`` and ``stop``.

    The descriptions go to :attr:`error_docs`, :attr:`counter_docs` and :attr:`pulse_docs`
    (the register tables of :mod:`hw.regdoc`).
    """

    def __init__(self, name, *, settings=(), errors=(), counters=(), pulses=()):
        self.name = name
        self.settings = tuple(settings)
        for s in self.settings:
            if not isinstance(s, Setting):
                raise TypeError("settings must be Setting objects, not {!r}".format(s))
        _names("setting", [s.name for s in self.settings])
        errors, self.error_docs = _documented(errors)
        counters, self.counter_docs = _documented(counters)
        pulses, self.pulse_docs = _documented(pulses)
        self.errors = _names("error", ("config",) + errors)
        self.counters = _names("counter", ("cycles",) + counters)
        self.pulses = _names("pulse", ("start", "clear_error", "stop") + pulses)
        self.ctrl_layout = data.StructLayout({p: 1 for p in self.pulses})
        self.error_layout = data.StructLayout({e: 1 for e in self.errors})
        self.status_layout = data.StructLayout({
            "running": 1, "done": 1, "error": 1,
            "reserved": STATUS_ERROR_OFFSET - 3, "errors": self.error_layout})
        self.settings_layout = data.StructLayout({s.name: s.shape for s in self.settings})
        self.counter_layout = data.StructLayout({c: COUNTER_BITS for c in self.counters})
        names = (("ctrl", "status") + tuple(s.name for s in self.settings)
                 + self.counters)
        _names("register", names)
        self._addr = {n: a for a, n in enumerate(names)}
        self.addr_bits = bits_for(len(names))

    @property
    def names(self):
        """Register names in address order."""
        return tuple(self._addr)

    def addr(self, name):
        """Address of register ``name`` (``"ctrl"``, ``"status"``, a setting or a counter)."""
        try:
            return self._addr[name]
        except KeyError:
            raise ValueError("{} engine has no register {!r}; it has {}"
                             .format(self.name, name, ", ".join(self._addr))) from None

    def ctrl(self, *pulses):
        """The CTRL value that fires ``pulses``."""
        unknown = set(pulses) - set(self.pulses)
        if unknown:
            raise ValueError("{} engine has no CTRL pulse {}; it has {}"
                             .format(self.name, ", ".join(sorted(unknown)),
                                     ", ".join(self.pulses)))
        return sum(1 << self.pulses.index(p) for p in pulses)

    def status(self, value):
        """A STATUS value as a ``data.Const``: ``.running``, ``.done``, ``.error``,
        ``.errors.<name>``."""
        return data.Const(self.status_layout, int(value))

    def describe(self, value):
        """A STATUS value in words, for failure messages."""
        st = self.status(value)
        words = [n for n in ("running", "done") if st[n]]
        words += ["err_" + e for e in self.errors if st.errors[e]]
        return "{:#x} ({})".format(int(value), " ".join(words) or "idle")


class RegisterSignature(wiring.Signature):
    """A register port with ``addr_bits`` address bits, seen from the host (a register file
    has ``In(RegisterSignature(...))``)."""

    def __init__(self, addr_bits):
        super().__init__({"addr": Out(addr_bits), "w_en": Out(1), "w_data": Out(32),
                          "r_data": In(32)})


class EngineControl(wiring.Component):
    """The register file, start / done logic and counters of one engine.

    Parameters
    ----------
    registers : :class:`EngineRegisters`

    Attributes
    ----------
    csr : ``In(RegisterSignature)``
        The engine's register port.
    settings : ``Out(settings_layout)``
        The settings registers.
    pulse : ``Out(ctrl_layout)``
        CTRL pulses, combinational in the cycle of the write (``start`` also when refused for
        its settings, never while running).
    config_ok : ``In(1)``
        The settings are in range: a START begins a run, else it sets ``errors.config``. A
        START while running sets ``errors.config`` too, and the run goes on undisturbed.
    finished : ``In(1)``
        The run is complete: ``running`` falls and ``done`` rises at the next edge.
    raise_error : ``In(error_layout)``
        Sets the named sticky error bits (a simultaneous ``clear_error`` wins).
    count : ``In(counter_layout)``
        Increments of the counters, added while running (``cycles`` counts by itself).
    counters : ``Out(counter_layout)``
        The counter values.
    running, done : ``Out(1)``
    """

    def __init__(self, registers):
        self._regs = registers
        super().__init__({
            "csr": In(RegisterSignature(registers.addr_bits)),
            "settings": Out(registers.settings_layout,
                            init={s.name: s.init for s in registers.settings}),
            "pulse": Out(registers.ctrl_layout),
            "config_ok": In(1), "finished": In(1),
            "raise_error": In(registers.error_layout),
            "count": In(registers.counter_layout),
            "counters": Out(registers.counter_layout),
            "running": Out(1), "done": Out(1),
        })

    def _setting_bits(self, name):
        # Raw bits: a signed field of a view is not assignable.
        f = self._regs.settings_layout[name]
        return self.settings.as_value()[f.offset:f.offset + Shape.cast(f.shape).width]

    def elaborate(self, platform):
        m = Module()
        regs = self._regs
        errors = Signal(regs.error_layout)
        csr = self.csr

        written = Signal(regs.ctrl_layout)      # the pulses of a CTRL write
        with m.If(csr.w_en):
            with m.Switch(csr.addr):
                with m.Case(regs.addr("ctrl")):
                    m.d.comb += written.eq(csr.w_data[:len(self.pulse.as_value())])
                for s in regs.settings:
                    with m.Case(regs.addr(s.name)):
                        m.d.sync += self._setting_bits(s.name).eq(
                            csr.w_data[:len(self._setting_bits(s.name))])

        status = Signal(regs.status_layout)
        m.d.comb += [status.running.eq(self.running), status.done.eq(self.done),
                     status.error.eq(errors.as_value().any()), status.errors.eq(errors)]
        with m.Switch(csr.addr):
            for name in regs.names:
                with m.Case(regs.addr(name)):
                    if name == "status":
                        value = status.as_value()
                    elif name in regs.counters:
                        value = self.counters[name]
                    elif name == "ctrl":
                        value = 0
                    else:
                        value = self._setting_bits(name)
                    m.d.sync += csr.r_data.eq(value)
            with m.Default():
                m.d.sync += csr.r_data.eq(0)

        # A START while running is refused (``config``) and the run goes on: the engine does
        # not see it, so nothing of the run restarts (its counters, its input counts).
        m.d.comb += [self.pulse.eq(written), self.pulse.start.eq(written.start & ~self.running)]
        for e in regs.errors:
            with m.If(self.raise_error[e]):
                m.d.sync += errors[e].eq(1)
        with m.If(written.start & self.running):
            m.d.sync += errors.config.eq(1)
        # CLEAR_ERROR wins: a block whose own error flag is registered still shows it in the
        # cycle of the clear.
        with m.If(self.pulse.clear_error):
            m.d.sync += errors.eq(0)

        with m.If(self.pulse.start):
            m.d.sync += [self.counters.eq(0), self.done.eq(0)]
            with m.If(self.config_ok):
                m.d.sync += self.running.eq(1)
            with m.Else():
                m.d.sync += [errors.config.eq(1), self.running.eq(0)]
        # STOP ends a run without DONE. It does not flush the datapath: it is for a stage whose
        # run took no input (the host found another stage's START refused and abandons the
        # pass); a stage stopped mid-stream keeps what it holds until the chip is reset.
        with m.Elif(self.pulse.stop):
            m.d.sync += self.running.eq(0)
        with m.Elif(self.running):
            m.d.sync += self.counters.cycles.eq(self.counters.cycles + 1)
            for c in regs.counters[1:]:
                m.d.sync += self.counters[c].eq(self.counters[c] + self.count[c])
            with m.If(self.finished):
                m.d.sync += [self.running.eq(0), self.done.eq(1)]
        return m


class Engine(wiring.Component):
    """Base of a pipeline stage with registers: the subclass sets :attr:`registers` (an
    :class:`EngineRegisters`) and passes its other ports; the base adds ``csr`` and
    :meth:`control` builds the register file."""

    registers = None

    def __init__(self, config, members):
        if not isinstance(self.registers, EngineRegisters):
            raise TypeError("{} must set registers to an EngineRegisters, not {!r}"
                            .format(type(self).__name__, self.registers))
        self._config = config
        super().__init__({**members, "csr": In(RegisterSignature(self.registers.addr_bits))})

    @property
    def config(self):
        return self._config

    def control(self, m):
        """Add the :class:`EngineControl` of :attr:`registers` to ``m``, on ``csr``."""
        m.submodules.control = ctl = EngineControl(self.registers)
        connect(m, wiring.flipped(self.csr), ctl.csr)
        return ctl


#: The setting of a stage that holds per-layer constants (weights, channel constants, LayerNorm
#: parameters, GELU tables) for ``max_layers`` transformer blocks: the block whose constants a
#: run uses and the loads write. The host writes it, with the block's scalar settings, before
#: each block's run (:mod:`sim.model_job`).
LAYER = Setting("layer", doc="transformer block whose constants the run uses and loads write "
                             "(below max_layers)")


def layer_part(m, ctl, config, depth):
    """``(base, ok)`` of a memory of ``max_layers`` parts of ``depth`` words each: the first
    address of the :data:`LAYER` setting's part, and whether the setting is in range (for the
    stage's ``config_ok``)."""
    layer = ctl.settings.layer
    if config.max_layers == 1:
        return 0, layer == 0
    base = Signal(range(config.max_layers * depth), name="layer_base")
    m.d.comb += base.eq(layer[:bits_for(config.max_layers)] * depth)
    return base, layer < config.max_layers


def token_width(m, ctl, config):
    """``(beats, ok)`` of a stage's ``d`` setting (a token of ``d`` channels, ``lanes`` a
    beat): its beats per token, and whether ``d`` is a multiple of ``lanes`` in
    ``lanes .. max_d`` (for the stage's ``config_ok``)."""
    V, d = config.lanes, ctl.settings.d
    beats = Signal(range(config.max_d // V + 1), name="token_beats")
    m.d.comb += beats.eq(d >> log2_exact(V))
    return beats, (d >= V) & (d <= config.max_d) & (d[:log2_exact(V)] == 0)


def token_gate(m, ctl, token_in):
    """Input admission of a run counted in tokens: 1 while running and fewer than the
    ``tokens`` setting have entered (``token_in``: a beat with ``last`` is taken), so no beat
    of the next run enters early."""
    tokens = ctl.settings.tokens
    tokens_in = Signal.like(tokens, name="tokens_in")
    with m.If(ctl.pulse.start):
        m.d.sync += tokens_in.eq(0)
    with m.Elif(token_in):
        m.d.sync += tokens_in.eq(tokens_in + 1)
    return ctl.running & (tokens_in < tokens)


def finish_on_tokens(m, ctl, o):
    """Count the tokens leaving on stream ``o`` in the ``tokens_out`` counter; the run is
    finished once the ``tokens`` setting of them have left."""
    m.d.comb += [ctl.count.tokens_out.eq(o.valid & o.ready & o.payload.last),
                 ctl.finished.eq(ctl.counters.tokens_out == ctl.settings.tokens)]
