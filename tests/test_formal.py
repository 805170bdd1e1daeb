"""The formal harness (``make formal``, :mod:`sim.formal`): its plumbing, and a few real
SymbiYosys runs, each beside the mutant that must fail it.

The full set of proofs is ``make formal``; these check that the harness cannot pass vacuously
(free inputs are free, a mutant is caught, a false assertion fails) and that every check has a
way to fail.
"""

import pytest

from sim.formal import properties as P
from sim.formal.cases import CASES, FORMAL_CONFIG, _arbiter, _softmax
from sim.formal.equiv import EQUIV
from sim.formal.harness import Harness, streams_of
from sim.formal.sby import run_sby
from sim.formal.trace import read_vcd


def _unused(dut):
    dut._MustUse__silence = True
    return dut


def test_streams_are_found_with_the_side_that_drives_them():
    got = {s.path: s.taken for s in streams_of(_unused(_arbiter()))}
    assert got == {"clients[0].req": True, "clients[0].res": False,
                   "clients[1].req": True, "clients[1].res": False,
                   "array.req": False, "array.res": True}
    assert {s.path: s.taken for s in streams_of(_unused(_softmax()))} == {"i": True,
                                                                        "o": False}


def test_pins_must_name_input_ports():
    with pytest.raises(ValueError, match="pins must name input ports"):
        Harness(_unused(_softmax()), pins={"busy": 0})
    with pytest.raises(ValueError, match="pins must name input ports"):
        Harness(_unused(_softmax()), pins={"nonexistent": 0})


def test_every_check_can_fail():
    """Each property has a mutant (or is a documented deviation that fails by itself)."""
    for c in CASES + EQUIV:
        assert c.mutant is not None or c.expect == "FAIL", (c.component, c.prop)
        assert c.mode in ("prove", "bmc") and c.depth >= 1
    assert any(c.quick for c in CASES) and any(c.quick for c in EQUIV)


def _only(component, prop):
    [c] = [c for c in CASES + EQUIV if c.component == component and c.prop.startswith(prop)]
    return c


def _run(check, tmp_path, mutated):
    dut, props, pins = check.build()
    h = Harness(dut, props, pins=pins, mutant=check.mutant if mutated else None)
    mode = "bmc" if mutated else check.mode
    return run_sby(h, tmp_path / ("mutant" if mutated else "check"), mode=mode,
                   depth=max(check.depth, 24) if mutated else check.depth,
                   cut_multipliers=check.cut, timeout=300)


@pytest.mark.parametrize("component,prop", [
    ("subvector_decoder", "error sticky"),
    ("arith", "saturate"),
])
def test_a_proof_passes_and_its_mutant_fails_with_a_trace(component, prop, tmp_path):
    check = _only(component, prop)
    v = _run(check, tmp_path, False)
    assert v.status == "PASS", (v, (tmp_path / "check" / "sby.log").read_text()[-2000:])
    m = _run(check, tmp_path, True)
    assert m.status == "FAIL" and m.step >= 0, m
    names, steps = read_vcd(tmp_path / "mutant" / "run" / "engine_0" / "trace.vcd")
    assert len(steps) == m.step + 2       # and the state after the failing step
    assert any(n.endswith("clk") for n in names.values())


def test_free_inputs_are_free_so_a_false_property_fails(tmp_path):
    """The trap of an undriven input (constant 0 in a closed design): ``mult`` is driven by
    the solver, so claiming it is always 0 must fail at once."""
    from amaranth.hdl import Assert

    def false_prop(h, m):
        m.d.comb += Assert(h.dut.mult == 0)

    v = run_sby(Harness(_softmax(), [false_prop]), tmp_path, mode="bmc", depth=2,
                cut_multipliers=True)
    assert v.status == "FAIL" and v.step == 0, v


def test_a_stalled_input_is_held_by_the_environment(tmp_path):
    """The harness's own assumption: an input beat waiting on ready keeps valid and payload
    (so the component is checked against lawful producers only); asserting it passes."""
    v = run_sby(Harness(_softmax(), [P.stream_rules("i")]), tmp_path, mode="prove", depth=2,
                cut_multipliers=True)
    assert v.status == "PASS", v
    assert FORMAL_CONFIG.max_tokens == 2
