"""The self-checking FPGA top under Amaranth's simulator, and the board build flow.

The simulation tests need no FPGA tools; the end-to-end iCE40 build is marked slow (CI runs
it, ``make test FAST=1`` skips it).
"""

import json
import re
from pathlib import Path

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from boards import build as board_build
from boards.selftest import SEED, SelfTest, selftest_vectors
from golden.blocks import pe_array_reference
from hw.config import preset

ROOT = Path(__file__).resolve().parent.parent


def simulate(dut, *, passes=2, max_cycles=20_000):
    """Run ``dut`` until ``passes`` passes completed, a failure, or ``max_cycles``; return
    the status outputs and the cycle count."""
    seen = {"heartbeat_toggles": 0}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        cycles, last_beat = 0, ctx.get(dut.heartbeat)
        while (ctx.get(dut.passes) < passes and not ctx.get(dut.failed)
               and cycles < max_cycles):
            await ctx.tick()
            cycles += 1
            beat = ctx.get(dut.heartbeat)
            seen["heartbeat_toggles"] += beat != last_beat
            last_beat = beat
        # Let a verdict that is still being latched settle.
        await ctx.tick().repeat(4)
        seen.update(cycles=cycles, **{name: ctx.get(getattr(dut, name))
                                      for name in ("passed", "failed", "done", "passes")})
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("name", ["tiny", "default"])
@pytest.mark.parametrize("stall_output", [True, False])
def test_selftest_passes(name, stall_output):
    dut = SelfTest(preset(name), heartbeat_cycles=7, stall_output=stall_output)
    got = simulate(dut)
    assert got["passes"] >= 2, got            # it repeats, and passes every time
    assert got["passed"] and got["done"] and not got["failed"], got
    # One pass at most takes the budget the sequencer allows itself.
    assert got["cycles"] <= 2 * (dut.cycle_budget + 32), got
    assert got["heartbeat_toggles"] >= got["cycles"] // 7 - 1, got


@pytest.mark.parametrize("name, row", [("tiny", 0), ("tiny", 5), ("tiny", -1),
                                       ("default", 77), ("default", -1)])
def test_selftest_detects_corrupted_expectation(name, row):
    n_rows = len(selftest_vectors(preset(name))[1])
    dut = SelfTest(preset(name), heartbeat_cycles=7, corrupt_row=row % n_rows)
    got = simulate(dut, passes=1)
    assert got["failed"] and got["done"], got
    assert not got["passed"] and got["passes"] == 0, got


@pytest.mark.parametrize("name", ["tiny", "default"])
@pytest.mark.parametrize("change", ["missing_row", "extra_row"])
def test_selftest_checks_the_row_count(name, change):
    dut = SelfTest(preset(name), heartbeat_cycles=7)
    # White box: edit the expected ROM contents before elaboration. One row more than the
    # array sends must end in the cycle-budget timeout, one fewer in the extra-row check.
    rows = dut._expected
    dut._expected = rows + [rows[-1]] if change == "missing_row" else rows[:-1]
    got = simulate(dut, passes=1)
    assert got["failed"] and not got["passed"] and got["passes"] == 0, got


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_vectors_cover_the_array(name):
    cfg = preset(name)
    beats, want, seed = selftest_vectors(cfg)
    assert (beats, want, seed) == selftest_vectors(cfg)        # deterministic
    assert seed >= SEED and len(beats) <= 24
    assert want == pe_array_reference(cfg, beats)
    assert len(want) == sum(b["last"] for b in beats) * cfg.rows
    assert {b["route"] for b in beats} == {0, 1, 2}
    assert {b["bypass"] for b in beats} == {0, 1}
    masks = {m for b in beats for m in b["mask"]}
    assert 0 in masks and (1 << cfg.lanes) - 1 in masks and len(masks) > 2


def test_selftest_rejects_bad_parameters():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="heartbeat_cycles"):
        SelfTest(cfg, heartbeat_cycles=0)
    with pytest.raises(ValueError, match="corrupt_row"):
        SelfTest(cfg, heartbeat_cycles=4, corrupt_row=len(selftest_vectors(cfg)[1]))
    with pytest.raises(ValueError, match="LED role"):
        SelfTest(cfg, leds={"blink": ("led", 0)})
    with pytest.raises(ValueError, match="resource name, number"):
        SelfTest(cfg, leds={"passed": "led0"})
    with pytest.raises(TypeError, match="stall_output"):
        SelfTest(cfg, stall_output=1)
    with pytest.raises(ValueError, match="max_beats"):
        selftest_vectors(cfg, max_beats=2)
    with pytest.raises(ValueError, match="heartbeat_cycles must be given"):
        Fragment.get(SelfTest(cfg), None)       # no platform to take a clock frequency from


def _nextpnr_json(path, *, achieved=17.5, constraint=12.0):
    util = {"ICESTORM_LC": (3800, 5280), "ICESTORM_DSP": (8, 8), "ICESTORM_RAM": (0, 30)}
    path.write_text(json.dumps({
        "utilization": {k: {"used": u, "available": a} for k, (u, a) in util.items()},
        "fmax": {"cd_sync.clk": {"achieved": achieved, "constraint": constraint}},
        "critical_paths": []}))


def test_parse_reports_json(tmp_path):
    _nextpnr_json(tmp_path / "top.report.json")
    (tmp_path / "top.stat.json").write_text(json.dumps({"design": {"num_cells_by_type": {
        "SB_LUT4": 2600, "SB_DFF": 100, "SB_DFFESR": 1500, "SB_MAC16": 8}}}))
    got = board_build.parse_reports(tmp_path, "ice40")
    assert (got["luts"], got["ffs"], got["dsps"], got["brams"]) == (3800, 1600, 8, 0)
    assert got["fmax_mhz"] == 17.5 and got["clock_mhz"] == 12.0 and got["timing_met"]


def test_parse_reports_log_fallback(tmp_path):
    (tmp_path / "top.tim").write_text(
        "Info: Device utilisation:\n"
        "Info: \t      TRELLIS_COMB:  9000/ 83640    10%\n"
        "Info: \t        TRELLIS_FF:  5000/ 83640     5%\n"
        "Info: \t        MULT18X18D:   144/   156    92%\n"
        "Info: \t            DP16KD:    12/   208     5%\n"
        "Info: Max frequency for clock '$glbnet$clk': 44.10 MHz (PASS at 25.00 MHz)\n"
        "Info: Max frequency for clock '$glbnet$clk': 41.23 MHz (FAIL at 50.00 MHz)\n")
    got = board_build.parse_reports(tmp_path, "ecp5")
    assert (got["luts"], got["ffs"], got["dsps"], got["brams"]) == (9000, 5000, 144, 12)
    assert got["fmax_mhz"] == 41.23 and got["clock_mhz"] == 50.0 and not got["timing_met"]


def test_parse_reports_fails_loudly(tmp_path):
    with pytest.raises(board_build.BuildError, match="No nextpnr report"):
        board_build.parse_reports(tmp_path, "ice40")
    (tmp_path / "top.report.json").write_text("{not json")
    with pytest.raises(board_build.BuildError, match="Cannot parse"):
        board_build.parse_reports(tmp_path, "ice40")
    _nextpnr_json(tmp_path / "top.report.json")     # no Yosys statistics: no FF count
    with pytest.raises(board_build.BuildError, match="flip-flops"):
        board_build.parse_reports(tmp_path, "ice40")


def test_build_cli_rejects_bad_arguments(capsys):
    assert board_build.main(["--board", "icebreaker", "--out", "/tmp/x"]) == 1
    assert "relative" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        board_build.main(["--board", "nexys"])
    with pytest.raises(ValueError, match="board"):
        board_build.build(board="nexys")
    with pytest.raises(ValueError, match="design must be selftest or a linked design"):
        board_build.build(board="icebreaker", design="pe_array")


def test_critical_path_summary(tmp_path):
    def step(kind, delay, net=None, frm="a", to="b"):
        return {"type": kind, "delay": delay, "net": net, "from": {"cell": frm},
                "to": {"cell": to}}
    slow = [step("clk-to-q", 1.0, frm="link.executor.fsm_state_SB_DFFESR_Q_3_DFFLC"),
            step("routing", 2.0, "link.executor.fsm_state_SB_DFFESR_Q_3_D"),
            step("logic", 1.5), step("routing", 0.5, "$nextpnr_ICESTORM_LC_20$I3"),
            step("routing", 3.0, "link.top.requantiser.value_SB_LUT4_O[3]"),
            step("setup", 0.5, to="link.top.stage_SB_DFFESR_Q_DFFLC")]
    fast = [step("clk-to-q", 1.0), step("setup", 1.0)]
    path = tmp_path / "top.report.json"
    _nextpnr_json(path)
    report = json.loads(path.read_text())
    report["critical_paths"] = [{"path": fast}, {"path": slow}]
    path.write_text(json.dumps(report))
    (tmp_path / "top.stat.json").write_text(json.dumps({"design": {"num_cells_by_type": {
        "SB_DFF": 100}}}))
    cp = board_build.parse_reports(tmp_path, "ice40")["critical_path"]
    assert cp == {"delay_ns": 8.5, "logic_ns": 3.0, "routing_ns": 5.5,
                  "from": "link.executor.fsm_state", "to": "link.top.stage",
                  "through": ["link.executor.fsm_state", "link.top.requantiser.value"]}
    assert board_build.critical_path({"critical_paths": []}) is None


def test_lut_multipliers_leave_the_dsps_to_the_requantiser():
    # tiny: 8 lanes + the requantiser's 2 partial products on 8 DSPs: the last two lanes in LUTs.
    cmd = board_build.lut_multipliers(preset("tiny"), 8)
    assert cmd == "proc; booth w:mul_0_6 w:mul_0_7 %u %ci1 t:$mul %i"
    assert board_build.lut_multipliers(preset("tiny"), 10) == ""
    three = preset("tiny").replace(requant_steps=3)
    assert board_build.lut_multipliers(three, 8) == "proc; booth w:mul_0_7 %ci1 t:$mul %i"
    with pytest.raises(ValueError, match="requantisers need 16 multipliers"):
        board_build.lut_multipliers(preset("vidt"), 8)


def test_a_design_too_large_for_the_part_fails_before_any_tool(monkeypatch):
    """The whole model needs about three times the LFE5U-85F's block RAM: the build says so,
    with the largest memories, in seconds and without running Yosys."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(board_build, "_run_script", lambda *a: pytest.fail("toolchain ran"))
    with pytest.raises(board_build.BuildError, match=r"model_link at preset vidt needs (\d+) "
                       r"block RAMs \(with one block's constants on chip, streamed per pass: "
                       r"(\d+)\), the LFE5U-85F has 208") as err:
        board_build.build(board="ulx3s", design="model_link", out="build/pytest-fit")
    # Streaming the blocks' constants saves their weights, but not enough to fit.
    resident, streamed = map(int, re.search(r"needs (\d+) .*streamed per pass: (\d+)",
                                            str(err.value)).groups())
    assert resident > streamed > 208
    needed, available, rams = board_build.fit("run_through_link", preset("vidt"), "ecp5")
    assert needed <= available == 208 and rams[0][1] >= rams[-1][1]


@pytest.mark.slow
def test_icebreaker_build_end_to_end(monkeypatch):
    # YoWASP tools only see relative paths under the current directory: build in the repo.
    monkeypatch.chdir(ROOT)
    out = Path("build", "pytest-icebreaker")
    assert board_build.main(["--board", "icebreaker", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["board"] == "icebreaker" and report["preset"] == "tiny"
    # The PE array behind the link at 3 Mbaud: 12 MHz / 3 Mbaud = 4 cycles a bit.
    assert report["design"] == "pe_array_link"
    assert report["link"] == {"baud": 3_000_000, "divisor": 4, "inputs": 1, "outputs": 1}
    assert 0 < report["utilization_percent"]["luts"] <= 100
    assert report["dsps"] == 8
    assert 0 < report["luts"] <= report["luts_available"] == 5280
    assert report["ffs"] > 0 and report["brams"] >= 0
    # The iCEBreaker clock is 12 MHz; nextpnr must close timing there.
    assert report["clock_mhz"] == pytest.approx(12.0, rel=1e-3)
    assert report["fmax_mhz"] > 12 and report["timing_met"]
    assert (out / "top.bin").stat().st_size > 0


@pytest.mark.parametrize("mhz", [75, 50, 60, 100, 125])
def test_ecp5_pll_dividers_make_the_clock_exactly(mhz):
    from boards.top import ecp5_pll_dividers
    clki, clkfb, clkop = ecp5_pll_dividers(25e6, mhz * 1e6)
    assert 25 * clkfb == mhz * clki                     # exact: the UART's divisor relies on it
    assert 400 <= mhz * clkop <= 800 and 25 / clki >= 3.125


def test_ecp5_pll_refuses_what_it_cannot_make():
    from boards.top import ecp5_pll_dividers
    # 48 = 25 * 48 / 25: a phase detector at 1 MHz, below the part's 3.125 MHz.
    with pytest.raises(ValueError, match="cannot make 48 MHz from 25 MHz"):
        ecp5_pll_dividers(25e6, 48e6)


def test_the_ulx3s_link_runs_on_the_pll_clock(monkeypatch):
    """The ULX3S's linked design runs from an EHXPLLL at the board's pll_hz (30 MHz from the
    25 MHz oscillator: 25 / 5 * 6, VCO 420 MHz), its reset held until LOCK, and the UART's bit
    time is that clock over 3 Mbaud (10 cycles). Elaborated for the board, no tool run."""
    from boards.top import BoardLink, ECP5PLL
    spec = board_build.BOARDS["ulx3s"]
    assert spec.pll_hz == 30e6 and spec.baud == 3_000_000 and spec.target_mhz == 75
    monkeypatch.setenv("OPENFPGALOADER", "true")
    platform = board_build._platform(spec)
    top = BoardLink("pe_array_link", preset("tiny"), clock_hz=spec.pll_hz, baud=spec.baud,
                    led=spec.leds["heartbeat"], clocks=ECP5PLL(output_hz=spec.pll_hz))
    assert top.divisor == 10
    il = platform.prepare(top, name="top").files["top.il"]
    assert il.count("cell \\EHXPLLL") == 1
    pll = il[il.index("cell \\EHXPLLL"):]
    pll = pll[:pll.index("\n  end")]
    for name, value in (("CLKI_DIV", 5), ("CLKFB_DIV", 6), ("CLKOP_DIV", 14)):
        assert re.search(r"parameter \\{} {}\b".format(name, value), pll), name
    assert "connect \\LOCK" in pll
