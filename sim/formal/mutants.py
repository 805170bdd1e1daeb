"""Ways to break a component on purpose, so that each proof is shown to be able to fail.

A mutant is ``patch(dut, m)``: it appends statements to the component's elaborated module
``m``, and a later assignment wins. :class:`Mutant` gives it a description for the report.
"""

from dataclasses import dataclass
from typing import Callable
from unittest import mock

from amaranth.asserts import AnySeq

from sim.formal.harness import internal

__all__ = ["Mutant", "replace_function", "withdraw", "duplicate", "take_always", "stick", "unstick",
           "forced"]


@dataclass(frozen=True)
class Mutant:
    """``patch(dut, m)`` runs on the elaborated module; ``context()``, if given, is entered
    around the elaboration (to replace a lowering function of :mod:`hw.arith`)."""
    description: str
    patch: Callable = None
    context: Callable = None


def replace_function(module, name, fake, description):
    """``module.name`` is ``fake`` while the component elaborates."""
    return Mutant(description, context=lambda: mock.patch.object(module, name, fake))


def _port(dut, path):
    obj = dut
    for part in path.replace("]", "").replace("[", ".").split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _submodule(m, name):
    """The module of submodule ``name`` of ``m`` (through a reset or domain transformer)."""
    sub = m._named_submodules[name][0]
    while hasattr(sub, "_elaboratable_"):
        sub = sub._elaboratable_
    return sub


def withdraw(path, comb=None, module=None):
    """``path`` drops its beat when the consumer stalls: a registered ``valid`` falls the
    next cycle; a combinational one (``comb``; by default, as the module drives it) falls in
    a cycle the solver picks. ``module``: the submodule that drives it."""
    def patch(dut, m):
        if module:
            m = _submodule(m, module)
        s = _port(dut, path)
        is_comb = comb if comb is not None else m._driving.get(s.valid, ["comb"])[0] == "comb"
        if is_comb:
            with m.If(~s.ready & AnySeq(1)):
                m.d.comb += s.valid.eq(0)
        else:
            with m.If(s.valid & ~s.ready):
                m.d.sync += s.valid.eq(0)
    return Mutant("{}.valid withdrawn while the consumer stalls".format(path), patch)


def duplicate(path):
    """``path`` repeats a beat once it is taken (a registered ``valid``)."""
    def patch(dut, m):
        s = _port(dut, path)
        with m.If(s.valid & s.ready):
            m.d.sync += s.valid.eq(1)
    return Mutant("{} sends each beat twice".format(path), patch)


def take_always(path):
    """``path`` (an input) is always ready: beats taken while the component is busy are
    lost (a combinational ``ready``)."""
    def patch(dut, m):
        m.d.comb += _port(dut, path).ready.eq(1)
    return Mutant("{}.ready always high: beats taken while busy are dropped".format(path),
                  patch)


def unstick(flag, when=None):
    """``flag`` falls again in a cycle with ``when(dut)`` (any cycle by default)."""
    def patch(dut, m):
        sig = _port(dut, flag)
        with m.If(when(dut) if when else 1):
            m.d.sync += sig.eq(0)
    return Mutant("{} cleared by itself{}".format(flag, " (in some cycles)" if when else ""),
                  patch)


def stick(name, value, description):
    """The internal register ``name`` never leaves ``value`` once there (a hang)."""
    def patch(dut, m):
        sig = internal(m, name)
        with m.If(sig == value):
            m.d.sync += sig.eq(value)
    return Mutant(description, patch)


def forced(name, value, description):
    """The internal signal ``name`` (combinational) is forced to ``value``."""
    def patch(dut, m):
        m.d.comb += internal(m, name).eq(value)
    return Mutant(description, patch)
