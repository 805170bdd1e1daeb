"""``make bench FULL=1``: the whole benchmark model (:class:`hw.model.Model`) on held-out clips,
from the generated Verilog under Verilator: logits bit for bit against
:meth:`golden.intvidt.IntVidT.forward`, the predicted class against the label, and the cycles
of every pass.

Each clip of the test split runs at a combined operating point (by default ``tau=4 r=8
rho=0.75``: delta projections, STA pruning, sub-vector attention, in the model's frame token
order, which the whole-model RTL holds; ``make eval``'s choice uses position order): one
pass per block (the first with the embedding, the last with the head; STA after the last
block adds a head pass), every output of every stage checked on the way (``sim.tb_model``).
``build/bench/model.json`` has one entry per clip::

    {"clip", "label", "logits", "golden_logits", "predicted", "golden_predicted",
     "cycles", "ideal_cycles", "array_busy", "load_beats", "report_beats", "keep_beats",
     "position_beats", "passes": [...]}

* ``cycles``: the passes' cycles summed (each pass from its first START to its last DONE:
  the pipeline drains between passes); ``ideal_cycles``: every performed MAC (embedding,
  projections, predictor, attention, head) over rows x lanes;
* ``load_beats``: the beats that load every constant of the model (one a cycle) before the
  first pass, beside the compute cycles, not in them;
* ``report_beats``: the STA report beats to the host (head-summed keys and ``sum |x|`` per
  token of a stage block), inside ``cycles``; ``keep_beats``: the keep-list beats back (one
  token index each), loaded between passes, one a cycle, not inside ``cycles``;
  ``position_beats``: the kept tokens' spatial positions, loaded between passes into each of
  the four projections' adapters (the same list four times), not inside ``cycles``; the
  host's selection time (``golden.sta.STAPruner``) is in none. The tokens themselves stay on
  chip, in the token buffer.

Every pass also carries the cycle model's prediction (:func:`hw.cycles.pass_cycles`:
``predicted_cycles``, ``model_error``), tabled against the measurement.

The bench exits non-zero when a clip's logits differ from the golden model's (the testbench
asserts it), its predicted class differs from the golden model's, or a pass's prediction misses
:data:`hw.cycles.TOLERANCE`.

    python -m sim.bench_model [--clips 0,1] [--tau 4] [--rho 0.75] [--r 8]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from hw.config import preset
from sim.model_check import model_error, model_table
from sim.runner import REPO, run_cocotb, write_report

CLIENTS = ("embed", "qkv", "predict", "attention", "proj", "fc1", "fc2", "head")


def _run(cfg, clip, tau, rho, r, out):
    results = out.resolve() / "model_clip{}_runs.json".format(clip)
    results.unlink(missing_ok=True)
    run_cocotb("model", cfg, "verilator", "sim.tb_model", seed=1, optimised=True,
               env={"RTSA_MODEL": "bench", "RTSA_CLIP": str(clip), "RTSA_TAU": str(tau),
                    "RTSA_RHO": str(rho), "RTSA_R": str(r), "RTSA_STALL": "0",
                    "RTSA_SEED": "1", "RTSA_RESULTS": str(results)})
    return json.loads(results.read_text())


def summarise(clip, res):
    passes = []
    for p in res["passes"]:
        c = p["counters"]
        busy = sum(c[s]["busy"] for s in CLIENTS if s in c)
        tokens = c.get("select", c.get("head_select", {})).get("tokens_out")
        passes.append({"name": p["name"].rsplit("/", 1)[-1], "tokens": tokens,
                       "cycles": p["cycles"], "ideal_cycles": p["ideal_cycles"],
                       "predicted_cycles": p["predicted_cycles"],
                       "model_error": model_error(p["cycles"], p["predicted_cycles"]),
                       "cycles_over_ideal": p["cycles"] / p["ideal_cycles"],
                       "array_busy": busy / p["cycles"], "busy_cycles": busy,
                       "report_beats": p["host_out_beats"], "keep_beats": p["host_in_beats"],
                       "position_beats": p["position_beats"]})
    cycles = sum(p["cycles"] for p in passes)
    busy = sum(p["busy_cycles"] for p in passes)
    return {"clip": clip, "label": res["label"], "logits": res["logits"],
            "golden_logits": res["golden_logits"], "predicted": res["predicted"],
            "golden_predicted": res["golden_predicted"], "cycles": cycles,
            "ideal_cycles": res["ideal_cycles"], "cycles_over_ideal": cycles / res["ideal_cycles"],
            "array_busy": busy / cycles,
            "load_beats": sum(p["load_beats"] for p in res["passes"]),
            "report_beats": sum(p["report_beats"] for p in passes),
            "keep_beats": sum(p["keep_beats"] for p in passes),
            "position_beats": sum(p["position_beats"] for p in passes), "passes": passes}


def markdown(cfg, meta, rows):
    lines = [
        "# The whole benchmark model on one PE array: held-out clips under Verilator", "",
        "Preset `{}` ({} rows x {} lanes = {} MACs/cycle), test clips {}, tau = {}, r = {}, "
        "rho = {} (delta, STA and sub-vector attention in frame order); every stage's output bit-exact against the "
        "golden model on the way. Ideal = performed MACs / {}. The tokens stay on chip (token "
        "buffer); the STA report beats to the host are inside the cycles; the beats back between "
        "passes (keep lists, one index each; the kept tokens' positions, into each of the four "
        "projections), loading the constants ({} beats, one a cycle) and the host's STA "
        "selection time are not.".format(
            cfg.name, cfg.rows, cfg.lanes, cfg.macs_per_cycle,
            ", ".join(str(r["clip"]) for r in rows), meta["tau"], meta["r"], meta["rho"],
            cfg.macs_per_cycle, rows[0]["load_beats"]), "",
        "| clip | label | predicted (chip / golden) | logits equal | cycles | ideal | "
        "cycles / ideal | array busy | reports out | keep list in | positions in |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        eq = "yes" if r["logits"] == r["golden_logits"] else "NO"
        lines.append("| {clip} | {label} | {predicted} / {golden_predicted} | {eq} | {cycles} "
                     "| {ideal_cycles:.0f} | {cycles_over_ideal:.3f} | {array_busy:.1%} "
                     "| {report_beats} | {keep_beats} | {position_beats} |".format(eq=eq, **r))
    lines += ["", "Per pass (clip {}):".format(rows[0]["clip"]), "",
              "| pass | tokens in | cycles | ideal | cycles / ideal | array busy | reports out "
              "| keep list in | positions in |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in rows[0]["passes"]:
        lines.append("| {name} | {tokens} | {cycles} | {ideal_cycles:.0f} "
                     "| {cycles_over_ideal:.3f} | {array_busy:.1%} | {report_beats} "
                     "| {keep_beats} | {position_beats} |".format(**p))
    lines += ["", "Logits (chip = golden): " + "; ".join(
        "clip {}: {}".format(r["clip"], r["logits"]) for r in rows), ""]
    model, _ = model_check(rows)
    return "\n".join(lines + model)


def model_check(rows):
    """The cycle model's table of every pass of every clip, and whether all are within
    :data:`hw.cycles.TOLERANCE`."""
    return model_table([("clip {} {}".format(r["clip"], p["name"]), p["cycles"],
                         p["predicted_cycles"]) for r in rows for p in r["passes"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="0,1")
    ap.add_argument("--tau", type=int, default=4)
    ap.add_argument("--rho", type=float, default=0.75)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "bench")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = preset("vidt")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in (int(c) for c in args.clips.split(",")):
        print("bench: whole model, test clip {} ...".format(clip), flush=True)
        rows.append(summarise(clip, _run(cfg, clip, args.tau, args.rho, args.r, args.out)))
        print("  {} cycles, logits {}".format(rows[-1]["cycles"], rows[-1]["logits"]),
              flush=True)
    ok = all(r["logits"] == r["golden_logits"] and r["predicted"] == r["golden_predicted"]
             for r in rows)
    model_ok = model_check(rows)[1]
    meta = {"tau": args.tau, "rho": args.rho, "r": args.r, "preset": cfg.name,
            "macs_per_cycle": cfg.macs_per_cycle, "bit_exact": ok,
            "model_within_tolerance": model_ok}
    write_report(args.out, "model", {"clips": rows, **meta}, markdown(cfg, meta, rows), t0)
    return 0 if ok and model_ok else 1


if __name__ == "__main__":
    sys.exit(main())
