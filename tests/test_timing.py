"""boards.timing: endpoint arrival estimates on small hand-made ECP5 netlists, against sums
written out here from the delay table."""

import pytest

from boards.timing import ECP5_DELAYS as D, arrivals, by_component


def _cell(kind, ins, outs, **params):
    conns = {**{p: bits for p, bits in ins.items()}, **{p: bits for p, bits in outs.items()}}
    dirs = {**{p: "input" for p in ins}, **{p: "output" for p in outs}}
    return {"type": kind, "parameters": params, "connections": conns, "port_directions": dirs}


def _netlist(cells):
    return {"modules": {"top": {"attributes": {"top": "1"}, "cells": cells}}}


def _ff(name_bit_d, q):
    return _cell("TRELLIS_FF", {"CLK": [1], "DI": [name_bit_d]}, {"Q": [q]})


def test_two_luts_between_registers():
    # a.q (bit 10) -> LUT -> LUT -> b.d: clk-to-q, then per LUT a net and the LUT, then the
    # net into the flip-flop and its setup.
    cells = {
        "blk.a_TRELLIS_FF_Q": _ff(2, 10),
        "lut1": _cell("LUT4", {"A": [10], "B": ["0"], "C": ["0"], "D": ["0"]}, {"Z": [11]}),
        "lut2": _cell("LUT4", {"A": [11], "B": [10], "C": ["0"], "D": ["0"]}, {"Z": [12]}),
        "blk.b_TRELLIS_FF_Q": _ff(12, 13),
    }
    got = {name: (ns, path) for ns, name, path in arrivals(_netlist(cells))}
    want = D["clk_to_q"] + 2 * (D["route"] + D["LUT4"]) + D["route"] + D["setup"]
    assert got["blk.b"][0] == pytest.approx(want, abs=0.01)
    assert got["blk.b"][1] == ["blk.a", "lut1", "lut2"]
    # a's input comes from b's output through no logic.
    assert got["blk.a"][0] == pytest.approx(0.0 + D["route"] + D["setup"], abs=0.01)


def test_block_ram_output_and_carry_chain():
    # A DP16KD's output through a two-cell carry chain (the carry between them is a dedicated
    # wire) into a flip-flop; a carry cell's bit-1 operand does not reach S0.
    cells = {
        "mem": _cell("DP16KD", {"ADA0": [5]}, {"DOA0": [20]}),
        "c0": _cell("CCU2C", {"A0": [20], "A1": ["0"], "CIN": ["0"]}, {"S0": [21], "COUT": [22]}),
        "c1": _cell("CCU2C", {"A0": ["0"], "A1": [20], "CIN": [22]}, {"S0": [23], "S1": [24]}),
        "x.s_TRELLIS_FF_Q": _ff(24, 30),
        "x.t_TRELLIS_FF_Q": _ff(23, 31),
    }
    got = {name: ns for ns, name, _ in arrivals(_netlist(cells))}
    into_chain = D["DP16KD_out"] + D["route"] + D["CCU2C_in"]
    # S1 of c1: the bit-1 operand directly (a net and the cell) or the carry; the later one.
    direct = D["DP16KD_out"] + D["route"] + D["CCU2C_in"]
    carried = into_chain + D["CCU2C_sum"]
    tail = D["route"] + D["setup"]
    assert got["x.s"] == pytest.approx(max(direct, carried) + tail, abs=0.01)
    assert got["x.t"] == pytest.approx(carried + tail, abs=0.01)
    # The RAM's address input is an endpoint too (from a constant-free launch: a pin).
    assert got["mem"] == pytest.approx(D["route"] + D["setup"], abs=0.01)


def test_components_rank_by_late_endpoints():
    endpoints = [(20.0, "a.b.c.x", ["p"]), (15.0, "a.b.c.y", ["q"]), (14.0, "a.b.d.z", ["r"]),
                 (10.0, "a.b.e.w", ["s"])]
    rows = by_component(endpoints, 13.33)
    assert rows == [("a.b.c", 2, 20.0, ["p"]), ("a.b.d", 1, 14.0, ["r"])]
    assert by_component(endpoints, 25.0) == []


def test_summary_counts_every_late_endpoint_and_the_build_prints_it():
    from boards.build import _estimate_table
    from boards.timing import summary
    cells = {
        "blk.a_TRELLIS_FF_Q": _ff(2, 10),
        "lut1": _cell("LUT4", {"A": [10], "B": ["0"], "C": ["0"], "D": ["0"]}, {"Z": [11]}),
        "blk.b_TRELLIS_FF_Q": _ff(11, 13),
    }
    b = D["clk_to_q"] + D["route"] + D["LUT4"] + D["route"] + D["setup"]
    # Between a's arrival (a net and setup) and b's: b alone is late.
    est = summary(_netlist(cells), 1e3 / (b - 0.05), depth=1)
    assert (est["endpoints"], est["late"]) == (2, 1)
    assert est["worst_ns"] == pytest.approx(b, abs=0.01)
    assert est["components"] == [dict(component="blk", late=1, worst_ns=pytest.approx(b, abs=0.01),
                                      path=["blk.a", "lut1"])]
    assert summary(_netlist(cells), 1e3 / (b + 0.05))["late"] == 0
    text = _estimate_table(est)
    assert "1 of 2 endpoints late" in text and "blk" in text
    assert "no timing estimate" in _estimate_table(None)
