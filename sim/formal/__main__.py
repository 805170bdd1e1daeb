"""``make formal``: every check of :mod:`sim.formal.cases` and :mod:`sim.formal.equiv`, and its
mutant, through SymbiYosys; a report of component x property with method, depth and time.

    python -m sim.formal --out build/formal [--quick] [--jobs 2] [--only WORD]

A check must end as it expects (``PASS``, or ``FAIL`` for a documented deviation), and its
mutant (the component broken on purpose) must ``FAIL``: a proof that cannot fail proves
nothing. The command exits non-zero otherwise. ``--quick`` runs the CI subset.
"""

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from amaranth.hdl import Shape

from sim.formal.cases import CASES, FORMAL_CONFIG
from sim.formal.equiv import EQUIV, Miter
from sim.formal.harness import Harness
from sim.formal.sby import Verdict, run_sby
from sim.formal.trace import read_vcd

ALL = CASES + EQUIV


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:60]


def _run(index, mutated, out):
    try:
        return _task(index, mutated, out)
    except Exception as e:       # a broken case is reported, and the others still run
        return index, mutated, Verdict("ERROR", -1, 0.0, "", "{}: {}".format(
            type(e).__name__, e))


def _task(index, mutated, out):
    check = ALL[index]
    dut, props, pins = check.build()
    mutant = check.mutant if mutated else None
    top = Harness(dut, props, pins=pins, mutant=mutant)
    work = Path(out) / _slug(check.component) / (_slug(check.prop) + ("_mutant" if mutated
                                                                       else ""))
    # A mutant is checked by BMC: a k-induction that fails its step (UNKNOWN) would not show a
    # counterexample from reset.
    mode, depth = (("bmc", max(check.depth, check.mutant_depth)) if mutated
                   else (check.mode, check.depth))
    v = run_sby(top, work, mode=mode, depth=depth, cut_multipliers=check.cut)
    if v.status == "FAIL" and isinstance(dut, Miter):
        # A pipeline's failing output belongs to the inputs `latency` steps before.
        v.detail = _inputs_at(work, v.step - dut.latency, {
            n: Shape.cast(mb.shape) for n, mb in dut.signature.members.items()})
    return index, mutated, v


def _inputs_at(work, step, shapes):
    """``name=value, ...`` of a miter's inputs (``{name: shape}``) in the failing step of its
    trace."""
    vcd = Path(work) / "run" / "engine_0" / "trace.vcd"
    if not vcd.exists():
        return ""
    codes, steps = read_vcd(vcd)
    at = steps[min(step, len(steps) - 1)]
    got = {}
    for code, n in codes.items():
        name = n[4:]
        if n.startswith("dut.") and name in shapes and at.get(code) is not None:
            v, sh = at[code], shapes[name]
            got[name] = v - (1 << sh.width) if sh.signed and v >> (sh.width - 1) else v
    return ", ".join("{}={}".format(n, v) for n, v in sorted(got.items()))


def _method(check):
    return ("k-induction, k = {}".format(check.depth) if check.mode == "prove"
            else "BMC, depth {}".format(check.depth))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/formal")
    ap.add_argument("--quick", action="store_true", help="only the CI subset")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="checks whose component or property has WORD")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    picked = [i for i, c in enumerate(ALL)
              if (not args.quick or c.quick)
              and (args.only.lower() in (c.component + " " + c.prop).lower())]
    tasks = [(i, False) for i in picked] + [(i, True) for i in picked if ALL[i].mutant]
    print("formal: {} checks, {} mutants, {} jobs (config {})".format(
        len(picked), len(tasks) - len(picked), args.jobs, FORMAL_CONFIG.summary()
        if hasattr(FORMAL_CONFIG, "summary") else FORMAL_CONFIG), flush=True)
    t0 = time.monotonic()
    results = {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(_run, i, mut, str(out)) for i, mut in tasks]
        for n, f in enumerate(futures, 1):
            i, mut, v = f.result()
            results[i, mut] = v
            c = ALL[i]
            want = "FAIL" if mut else c.expect
            mark = "ok " if v.status == want else "BAD"
            print("[{:3d}/{}] {} {:18s} {:55s} {:8s} {:7s} {:6.1f} s{}".format(
                n, len(tasks), mark, c.component, (c.prop + (" [mutant]" if mut else ""))[:55],
                v.status, "step {}".format(v.step) if v.step >= 0 else "", v.seconds,
                "  " + v.detail.splitlines()[-1] if v.status == "ERROR" and v.detail else ""),
                flush=True)
    rows, bad = [], 0
    for i in picked:
        c = ALL[i]
        v = results[i, False]
        mv = results.get((i, True))
        ok = v.status == c.expect and (mv is None or mv.status == "FAIL")
        bad += not ok
        rows.append({
            "component": c.component, "property": c.prop, "mode": c.mode, "depth": c.depth,
            "method": _method(c), "status": v.status, "expected": c.expect,
            "seconds": round(v.seconds, 1), "counterexample_step": v.step,
            "cut_multipliers": c.cut, "note": c.note, "ok": ok,
            "mutant": None if mv is None else {
                "description": c.mutant.description, "status": mv.status,
                "counterexample_step": mv.step, "seconds": round(mv.seconds, 1),
                "counterexample": mv.detail if isinstance(mv.detail, str) else "",
                "trace": str(Path(mv.workdir) / "run" / "engine_0")},
        })
    wall = time.monotonic() - t0
    report = {"config": repr(FORMAL_CONFIG), "quick": args.quick, "wall_seconds": round(wall, 1),
              "checks": rows, "failures": bad}
    (out / "formal.json").write_text(json.dumps(report, indent=1))
    lines = ["# make formal{}".format(" (quick subset)" if args.quick else ""), "",
             "Written by `python -m sim.formal --out {}{}` in {:.0f} s ({} jobs). Control checks "
             "run on `{}`.".format(args.out, " --quick" if args.quick else "", wall, args.jobs,
                                  FORMAL_CONFIG.name), "",
             "| component | property | method | result | s | mutant (broken on purpose) | "
             "mutant result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mu = r["mutant"]
        res = r["status"] + ("" if r["expected"] == "PASS" else " (expected)")
        lines.append("| {} | {}{} | {} | {} | {} | {} | {} |".format(
            r["component"], r["property"], " ({})".format(r["note"]) if r["note"] else "",
            r["method"], res, r["seconds"], mu["description"] if mu else "—",
            "{} at step {}{} ({} s)".format(
                mu["status"], mu["counterexample_step"],
                ": " + mu["counterexample"] if mu["counterexample"].count("=") else "",
                mu["seconds"]) if mu else "—"))
    (out / "formal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    print("formal: {} of {} checks as expected, {:.0f} s -> {}".format(
        len(rows) - bad, len(rows), wall, out / "formal.json"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
