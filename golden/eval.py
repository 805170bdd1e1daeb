"""``make eval``: top-1 of the benchmark VidT against the ideal computation saving.

Runs the committed benchmark model (:mod:`golden.benchmark`) on held-out clips in float mode,
dense integer mode, and under each sparsity technique alone and combined:

* ``delta``: inter-frame delta projections on QKV, output projection, fc1 and fc2 with one
  threshold ``tau`` (int8 input units) for all of them (:mod:`golden.delta`);
* ``sta``: STA token pruning dropping ``r`` tokens per group and stage (:mod:`golden.sta`);
* ``attention``: sub-vector attention keeping a fraction ``rho`` of the key units per query
  unit, at the ``subvector`` (RTSA), ``block`` (coarse) or ``element`` (fine) granularity,
  all with the same predictor budget (:mod:`golden.subvector`); ``v`` is the lanes of the
  ``default`` hardware preset;
* ``combined``: the three together.

The ideal computation saving of a point is the dense integer model's MACs divided by the MACs
the point performs, predictor included (every layer counted: embedding, projections, QK^T,
A.V, MLP, head). Accuracies are top-1 in percent on the first ``--clips`` clips of the
``test`` split; ``agreement`` is the fraction of clips whose prediction equals the dense int8
prediction (a less noisy view of the damage than top-1 on a finite split).

Writes ``OUT/report.json``, ``OUT/report.md`` (the table) and ``OUT/top1_vs_saving.png``.
The default run is bounded (about 5 minutes on 2 cores); ``--full`` (``make eval FULL=1``)
sweeps every technique's parameter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from golden import benchmark
from golden.intvidt import Execution
from golden.sparse import SparseExecution
from golden.sta import STAPruner
from golden.subvector import GRANULARITIES, SubvectorAttention

__all__ = ["Point", "DEFAULT_POINTS", "full_points", "execution", "evaluate", "main"]

#: RTSA's published ideal computation saving at < 1 % top-1 loss (for comparison only).
RTSA_SAVING = (2.71, 5.32)
#: The accuracy budget of an operating point, in top-1 percentage points below dense int8.
LOSS_BUDGET = 1.0
#: Order of the layer kinds in reports.
LAYER_KINDS = ("embed", "qkv", "predictor", "qk", "av", "proj", "fc1", "fc2", "head")


@dataclass(frozen=True)
class Point:
    """One operating point: which techniques run, with which parameters.

    ``tau = None`` runs the linear layers densely, ``r = 0`` prunes no tokens, ``rho = 1``
    keeps all of attention.
    """
    label: str
    technique: str
    tau: int | None = None
    r: int = 0
    rho: float = 1.0
    granularity: str = "subvector"

    def __post_init__(self):
        if self.technique not in ("dense", "delta", "sta", "attention", "combined"):
            raise ValueError("Unknown technique {!r}".format(self.technique))
        if self.granularity not in GRANULARITIES:
            raise ValueError("Unknown granularity {!r}".format(self.granularity))


def _delta(tau):
    return Point(f"delta tau={tau}", "delta", tau=tau)


def _sta(r):
    return Point(f"STA r={r}", "sta", r=r)


def _attn(rho, granularity="subvector"):
    return Point(f"{granularity} rho={rho:g}", "attention", rho=rho, granularity=granularity)


def _combined(tau, r, rho):
    return Point(f"combined tau={tau} r={r} rho={rho:g}", "combined", tau=tau, r=r, rho=rho)


DENSE_INT8 = Point("dense int8", "dense")

#: The bounded default run: every technique alone, every granularity, combined points.
DEFAULT_POINTS = (
    DENSE_INT8,
    _delta(4),
    _sta(8), _sta(12),
    _attn(0.5), _attn(0.5, "block"), _attn(0.5, "element"),
    # Delta + STA (exact attention), then with sub-vector attention; the last one is the
    # aggressive end (about 3x, -2.6 pp on 1000 clips).
    _combined(4, 8, 1.0), _combined(4, 12, 1.0), _combined(4, 8, 0.75), _combined(8, 12, 0.5),
)


def full_points():
    """The full sweep (``--full``)."""
    points = [DENSE_INT8]
    points += [_delta(t) for t in (0, 1, 2, 3, 4, 6, 8, 12)]
    points += [_sta(r) for r in (4, 8, 12, 16, 20, 24)]
    points += [_attn(rho, g) for g in GRANULARITIES for rho in (0.75, 0.5, 0.25, 0.125)]
    points += [_combined(t, r, rho) for t in (2, 4, 8) for r in (8, 12)
               for rho in (1.0, 0.75, 0.5, 0.375)]
    return points


def execution(point: Point, qmodel, v: int) -> Execution:
    """A fresh execution of ``point`` for one batch of clips."""
    cfg = qmodel.cfg
    if point.technique == "dense":
        return Execution()
    pruner = STAPruner(cfg.n_t, cfg.n_s, point.r, cfg.depth) if point.r else None
    attention = (SubvectorAttention(v, point.rho, point.granularity) if point.rho < 1
                 else None)
    return SparseExecution(cfg.n_s, tau=point.tau, attention=attention, pruner=pruner)


def _progress(msg, final=False):
    end = "\n" if final or not sys.stdout.isatty() else "\r"
    if final or sys.stdout.isatty():
        print(msg, end=end, flush=True)


@torch.no_grad()
def evaluate(point: Point, qmodel, videos, labels, *, v: int, batch: int = 50,
             reference=None) -> dict:
    """Run ``point`` over the clips; top-1, predictions and MACs per ``(block, layer)``."""
    correct, preds, macs = 0, [], {}
    t0 = time.time()
    for lo in range(0, len(labels), batch):
        run = execution(point, qmodel, v)
        logits = qmodel(videos[lo:lo + batch], run)
        pred = logits.argmax(-1)
        preds.append(pred)
        correct += int((pred == labels[lo:lo + batch]).sum())
        for key, c in run.macs.items():
            m = macs.setdefault(key, [0, 0])
            m[0] += c.dense
            m[1] += c.performed
        done = min(lo + batch, len(labels))
        _progress(f"  {point.label}: {done}/{len(labels)} clips, {time.time() - t0:.0f} s")
    preds = torch.cat(preds)
    out = dict(top1=100.0 * correct / len(labels), preds=preds, macs=macs,
               seconds=time.time() - t0)
    if reference is not None:
        out["agreement"] = float((preds == reference).double().mean())
    return out


def _by_layer(macs, key_filter=lambda k: True):
    kinds = {}
    for (block, layer), (_, performed) in macs.items():
        if key_filter((block, layer)):
            kinds[layer] = kinds.get(layer, 0) + performed
    return kinds


def _record(point, result, dense_macs, clips):
    dense_total = sum(m[0] for m in dense_macs.values())
    performed = sum(m[1] for m in result["macs"].values())
    per_kind = _by_layer(result["macs"])
    dense_kind = _by_layer({k: (m[0], m[0]) for k, m in dense_macs.items()})
    rec = dict(label=point.label, technique=point.technique,
               params=dict(tau=point.tau, r=point.r, rho=point.rho,
                           granularity=point.granularity),
               top1=round(result["top1"], 2),
               agreement=round(result.get("agreement", 1.0), 4),
               ideal_saving=round(dense_total / performed, 3),
               macs_per_clip=performed // clips,
               macs_by_layer={k: dict(dense=dense_kind.get(k, 0) // clips,
                                      performed=per_kind.get(k, 0) // clips)
                              for k in LAYER_KINDS if k in dense_kind or k in per_kind},
               macs_by_block=[dict(block=b, layer=layer, performed=m[1] // clips)
                              for (b, layer), m in sorted(result["macs"].items())],
               seconds=round(result["seconds"], 1))
    return rec


def _markdown(report) -> str:
    int8 = report["dense_int8_top1"]
    lines = [
        f"Benchmark VidT ({report['model']['parameters']} parameters), "
        f"{report['clips']} `{report['split']}` clips, sub-vector length v = {report['v']}.",
        f"Dense float top-1 **{report['dense_float_top1']:.2f} %**, dense int8 top-1 "
        f"**{int8:.2f} %** ({report['dense_macs_per_clip'] / 1e6:.1f} M MACs per clip).",
        "",
        "| point | technique | top-1 (%) | vs int8 (pp) | agrees with int8 | ideal saving |",
        "|---|---|---|---|---|---|",
    ]
    for p in report["points"]:
        lines.append(f"| {p['label']} | {p['technique']} | {p['top1']:.2f} | "
                     f"{p['top1'] - int8:+.2f} | {100 * p['agreement']:.1f} % | "
                     f"{p['ideal_saving']:.2f}x |")
    best = report["best_within_budget"]
    lines.append("")
    if best:
        lines.append(f"Best point within {LOSS_BUDGET:g} pp of dense int8: **{best['label']}**, "
                     f"{best['ideal_saving']:.2f}x ideal saving at {best['top1']:.2f} % top-1. "
                     f"RTSA reports {RTSA_SAVING[0]}x-{RTSA_SAVING[1]}x at < 1 % loss.")
    else:
        lines.append(f"No point within {LOSS_BUDGET:g} pp of dense int8.")
    return "\n".join(lines) + "\n"


def _plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.axvspan(*RTSA_SAVING, color="tab:green", alpha=0.12,
               label=f"RTSA: {RTSA_SAVING[0]}-{RTSA_SAVING[1]}x at <1% loss")
    int8 = report["dense_int8_top1"]
    ax.axhline(report["dense_float_top1"], color="grey", ls=":", label="dense float")
    ax.axhline(int8, color="black", ls="-", lw=0.8, label="dense int8")
    ax.axhline(int8 - LOSS_BUDGET, color="black", ls="--", lw=0.8, label="dense int8 - 1 pp")
    styles = {"dense": ("black", "s"), "delta": ("tab:blue", "o"), "sta": ("tab:orange", "^"),
              "combined": ("tab:red", "*")}
    gran_styles = {"subvector": ("tab:purple", "D"), "block": ("tab:brown", "P"),
                   "element": ("tab:pink", "X")}
    seen = set()
    for p in report["points"]:
        if p["technique"] == "attention":
            key = f"attention ({p['params']['granularity']})"
            color, marker = gran_styles[p["params"]["granularity"]]
        else:
            key = p["technique"]
            color, marker = styles[p["technique"]]
        ax.scatter(p["ideal_saving"], p["top1"], color=color, marker=marker, s=60,
                   label=None if key in seen else key, zorder=3)
        seen.add(key)
        ax.annotate(p["label"].replace("combined ", ""), (p["ideal_saving"], p["top1"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ticks = [1, 1.5, 2, 3, 4, 5, 6]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("ideal computation saving (dense MACs / performed MACs)")
    ax.set_ylabel(f"top-1 (%) on {report['clips']} held-out clips")
    ax.set_title("Benchmark VidT: accuracy against computation saved")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(points, clips: int, out: Path, batch: int = 50) -> dict:
    """Evaluate ``points`` on ``clips`` held-out clips; write the report files into ``out``."""
    from hw.config import preset
    t0 = time.time()
    v = preset("default").lanes
    meta = benchmark.metadata()
    print(f"benchmark model: {benchmark.WEIGHTS.name} ({meta['command']})", flush=True)
    fmodel = benchmark.float_model()
    print(f"quantising on {benchmark.CALIB_CLIPS} training clips ...", flush=True)
    qmodel = benchmark.int_model()
    print(f"generating {clips} {benchmark.EVAL_SPLIT} clips ...", flush=True)
    videos, labels = benchmark.clips(clips)
    from golden.dataset import to_float
    with torch.no_grad():
        fpred = torch.cat([fmodel(to_float(videos[i:i + batch])).argmax(-1)
                           for i in range(0, clips, batch)])
    float_top1 = 100.0 * float((fpred == labels).double().mean())
    print(f"dense float: top-1 {float_top1:.2f} %", flush=True)

    points = list(points)
    if points[0] != DENSE_INT8:
        points.insert(0, DENSE_INT8)
    records, dense = [], None
    for i, point in enumerate(points):
        res = evaluate(point, qmodel, videos, labels, v=v, batch=batch,
                       reference=None if dense is None else dense["preds"])
        if dense is None:
            dense = res
        rec = _record(point, res, dense["macs"], clips)
        records.append(rec)
        _progress(f"[{i + 1}/{len(points)}] {point.label}: top-1 {rec['top1']:.2f} %, "
                  f"agreement {100 * rec['agreement']:.1f} %, ideal saving "
                  f"{rec['ideal_saving']:.2f}x ({rec['seconds']:.0f} s)", final=True)
    int8_top1 = records[0]["top1"]
    within = [p for p in records if p["top1"] >= int8_top1 - LOSS_BUDGET and p["ideal_saving"] > 1]
    best = max(within, key=lambda p: p["ideal_saving"]) if within else None
    report = dict(
        model=dict(weights=str(benchmark.WEIGHTS.relative_to(Path.cwd()))
                   if benchmark.WEIGHTS.is_relative_to(Path.cwd()) else str(benchmark.WEIGHTS),
                   command=meta["command"], parameters=sum(p.numel() for p in fmodel.parameters()),
                   training_heldout_top1=100.0 * meta["heldout_top1"]),
        split=benchmark.EVAL_SPLIT, clips=clips, v=v,
        calibration_clips=benchmark.CALIB_CLIPS,
        dense_float_top1=round(float_top1, 2), dense_int8_top1=int8_top1,
        dense_macs_per_clip=records[0]["macs_per_clip"],
        points=records, loss_budget_pp=LOSS_BUDGET,
        best_within_budget=None if best is None else dict(
            label=best["label"], top1=best["top1"], ideal_saving=best["ideal_saving"]),
        rtsa_reference=dict(ideal_saving=list(RTSA_SAVING), loss_pp=1.0),
        wall_time_s=round(time.time() - t0, 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _plot(report, out / "top1_vs_saving.png")
    print(_markdown(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'top1_vs_saving.png'} "
          f"({report['wall_time_s']:.0f} s)", flush=True)
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/eval"))
    p.add_argument("--clips", type=int, default=1000, help="held-out clips (default 1000)")
    p.add_argument("--full", action="store_true", help="full sweep of every technique")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error("--clips must be positive")
    torch.set_num_threads(args.threads)
    return run(full_points() if args.full else DEFAULT_POINTS, args.clips, args.out, args.batch)


if __name__ == "__main__":
    main()
