"""``make synth`` report parsing (no Yosys run: the synthesis itself is ``make synth``)."""

import json

import pytest

from hw.synth import markdown_table, parse_stat, resources

STAT = {
    "creator": "Yosys 0.70",
    "invocation": "stat -json ",
    "modules": {"\\top": {"num_cells": 9, "num_cells_by_type": {
        "LUT4": 4, "TRELLIS_FF": 2, "MULT18X18D": 1, "DP16KD": 1, "TRELLIS_DPR16X4": 1}}},
    "design": {"num_cells": 12, "num_cells_by_type": {
        "CCU2C": 3, "LUT4": 4, "TRELLIS_FF": 2, "$_DFF_P_": 1, "MULT18X18D": 1,
        "DP16KD": 1, "PDPW16KD": 1, "TRELLIS_DPR16X4": 1, "PFUMX": 2}},
}


def test_parse_stat_design_summary():
    # Log text before the JSON (as `tee` may write) is skipped.
    cells = parse_stat("-- stat --\n" + json.dumps(STAT, indent=1) + "\nEnd of script.\n")
    assert cells["LUT4"] == 4 and cells["PDPW16KD"] == 1
    assert resources(cells) == {"LUT4": 4, "FF": 3, "CCU2C": 3, "MULT18X18D": 1, "ALU54B": 0,
                                "DP16KD": 2, "DPR16X4": 1}


def test_parse_stat_modules_only():
    stat = {k: v for k, v in STAT.items() if k != "design"}
    assert resources(parse_stat(json.dumps(stat)))["FF"] == 2
    with pytest.raises(ValueError):
        parse_stat("ERROR: no report")


def test_markdown_table():
    ok = {"preset": "tiny", "design": "pe_array", "ok": True, "status": "ok",
          "resources": resources({"LUT4": 12345}), "convert_seconds": 1.0, "seconds": 2.5}
    bad = {"preset": "vidt", "design": "run_through", "ok": False, "status": "failed (rc 1)",
           "convert_seconds": 30.0, "seconds": 100.0}
    lines = markdown_table([ok, bad]).splitlines()
    assert lines[0].startswith("| preset | top | status | LUT4 |")
    assert "| 12 345 |" in lines[2] and lines[2].endswith("| 1.0 | 2.5 |")
    assert lines[3].startswith("| vidt | run_through | failed (rc 1) | - |")
