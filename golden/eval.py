"""``make eval``: top-1 of the benchmark VidT against the computation it saves, on the test split.

**Protocol.** Every threshold, operating point and search result was chosen on the
*validation* split by :mod:`golden.search` (``make search``), whose result is committed beside
the weights (:data:`golden.search.RESULT`, with the command that reproduces it). This module
only *reports*, on the *test* split (never seen by training, calibration or the search):

* each point's top-1 and its difference from dense int8, with the paired 95 % bootstrap
  interval of that difference (:func:`paired_interval`: clips resampled with replacement, the
  same resample for the point and the reference), and the fraction of clips whose prediction
  changed;
* its ideal computation saving: the dense integer model's MACs over the work the point does,
  which is its performed MACs plus every overhead (:mod:`golden.macs`: the predictor and its
  keep selection, the delta encoder's compares, STA's scoring), each also in its own column;
* the cycle saving the accelerator's cycle model predicts for the point's measured sparsity
  (:func:`hw.cycles.model_cycles` on the ``vidt`` preset; what it leaves out: the host's STA
  selection and the link; each layer's sent elements are spread evenly over its tokens);
* the < 1 pp budget is judged on the test point estimate, the interval shown beside it.

Points (:func:`points`): dense int8; each technique alone at its validation-chosen setting
(delta projections, STA, sub-vector attention); the uniform combination chosen on validation;
the layerwise search's choice; and the granularity curves: sub-vector, block and element
attention at several keep ratios, all at the same predictor budget and in the chosen token
order, plus sub-vector in the model's frame-major order (what the order buys).

Writes ``OUT/report.json``, ``OUT/report.md`` (the tables), ``OUT/top1_vs_saving.png`` (every
point with its interval, and the search's validation front) and ``OUT/granularity.png`` (the
curves). The default run takes 500 test clips (about 8 minutes on 2 cores); ``--full`` (``make
eval FULL=1``) takes 3000 and a denser curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from golden import benchmark, macs
from golden.intvidt import Execution
from golden.sparse import SparseExecution
from golden.sta import STAPruner
from golden.subvector import GRANULARITIES, KEEPS, ORDERS, SubvectorAttention

__all__ = ["Point", "DENSE_INT8", "costs", "execution", "evaluate", "paired_interval", "sparsity",
           "points", "run", "main", "RTSA_SAVING", "LOSS_BUDGET"]

#: RTSA's published ideal computation saving at < 1 % top-1 loss (for comparison only).
RTSA_SAVING = (2.71, 5.32)
#: The accuracy budget of an operating point, in top-1 percentage points below dense int8.
LOSS_BUDGET = 1.0
#: Bootstrap resamples of the paired interval, and the seed of their generator.
BOOTSTRAP, BOOTSTRAP_SEED = 2000, 0
#: Cost columns of the report: performed array MACs, then the overheads (golden.macs).
COST_KINDS = ("array",) + macs.OVERHEADS
#: Which accounting entries (``Execution.macs`` layer names) each cost column sums.
_KIND_OF = {"predictor": "predictor", "select": "predictor", "compare": "compare", "sta": "sta"}
#: Order of the layer kinds in reports.
LAYER_KINDS = ("embed", "qkv", "predictor", "select", "qk", "av", "proj", "fc1", "fc2", "head",
               "compare", "sta")


@dataclass(frozen=True)
class Point:
    """One operating point: which techniques run, with which parameters.

    ``tau``: delta threshold, one for every layer or one per block (``None``: dense linears);
    ``r``: STA tokens dropped per group, one or one per stage (0: none); ``rho``: attention keep
    ratio, one or one per block (1: dense attention); ``granularity``, ``order``, ``keep``,
    ``margin``: the attention policy (:class:`golden.subvector.SubvectorAttention`).
    """
    label: str
    technique: str
    tau: object = None
    r: object = 0
    rho: object = 1.0
    granularity: str = "subvector"
    order: str = "frame"
    keep: str = "topk"
    margin: float = 4.0

    def __post_init__(self):
        if self.technique not in ("dense", "delta", "sta", "attention", "combined", "search"):
            raise ValueError("Unknown technique {!r}".format(self.technique))
        if self.granularity not in GRANULARITIES:
            raise ValueError("Unknown granularity {!r}".format(self.granularity))
        if self.order not in ORDERS or self.keep not in KEEPS:
            raise ValueError("Unknown order {!r} or keep {!r}".format(self.order, self.keep))
        for name in ("tau", "r", "rho"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def sparse_attention(self):
        rhos = self.rho if isinstance(self.rho, tuple) else (self.rho,)
        return any(r < 1 for r in rhos)

    def params(self):
        return dict(tau=self.tau, r=self.r, rho=self.rho, granularity=self.granularity,
                    order=self.order, keep=self.keep, margin=self.margin)

    @classmethod
    def from_dict(cls, label, technique, params):
        return cls(label, technique, **params)


DENSE_INT8 = Point("dense int8", "dense")


def execution(point: Point, qmodel, v: int) -> Execution:
    """A fresh execution of ``point`` for one batch of clips."""
    cfg = qmodel.cfg
    if point.technique == "dense":
        return Execution()
    rs = point.r if isinstance(point.r, tuple) else (point.r,)
    pruner = STAPruner(cfg.n_t, cfg.n_s, point.r, cfg.depth) if any(rs) else None
    attention = (SubvectorAttention(v, point.rho, point.granularity, order=point.order,
                                    keep=point.keep, margin=point.margin,
                                    grid_width=cfg.width // cfg.patch)
                 if point.sparse_attention else None)
    return SparseExecution(cfg.n_s, tau=point.tau, attention=attention, pruner=pruner)


def _progress(msg, final=False):
    end = "\n" if final or not sys.stdout.isatty() else "\r"
    if final or sys.stdout.isatty():
        print(msg, end=end, flush=True)


@dataclass
class Result:
    """What one point did on a set of clips: predictions, per-clip correctness, the MAC
    accounting ``(block, layer) -> [dense, performed]`` summed over the clips, and the
    per-block workload the cycle model takes."""
    preds: torch.Tensor
    correct: torch.Tensor
    macs: dict
    blocks: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def top1(self):
        return 100.0 * float(self.correct.double().mean())


@torch.no_grad()
def evaluate(point: Point, qmodel, videos, labels, *, v: int, batch: int = 50,
             what: str = "") -> Result:
    """Run ``point`` over the clips."""
    preds, acc, blocks = [], {}, None
    t0 = time.time()
    for lo in range(0, len(labels), batch):
        run = execution(point, qmodel, v)
        preds.append(qmodel(videos[lo:lo + batch], run).argmax(-1))
        for key, c in run.macs.items():
            m = acc.setdefault(key, [0, 0])
            m[0] += c.dense
            m[1] += c.performed
        blocks = _merge_blocks(blocks, run, qmodel.cfg)
        done = min(lo + batch, len(labels))
        _progress(f"  {what}{point.label}: {done}/{len(labels)} clips, "
                  f"{time.time() - t0:.0f} s")
    preds = torch.cat(preds)
    return Result(preds, preds == labels, acc, blocks, time.time() - t0)


def _merge_blocks(blocks, run, cfg):
    """Per block: tokens, dense tokens, sent and examined elements of each delta layer, kept
    and dense attention entries (summed over batches)."""
    out = blocks or [dict(tokens=0, dense_tokens=0, sent={}, elements={}, dense_sent={},
                          dense_elements={}, kept=0, entries=0) for _ in range(cfg.depth)]
    for b, rec in enumerate(out):
        qk = run.macs.get((b, "qk"))
        if qk is not None:
            rec["kept"] += qk.performed
            rec["entries"] += qk.dense
        for name in ("qkv", "proj", "fc1", "fc2"):
            c = run.macs.get((b, name))
            if c is None:
                continue
            if name == "qkv":
                if hasattr(c, "tokens") and c.tokens:
                    rec["tokens"] += c.tokens
                    rec["dense_tokens"] += c.dense_tokens
                else:           # a dense QKV: every token is a dense one
                    tokens = c.dense // (cfg.dim * 3 * cfg.dim)
                    rec["tokens"] += tokens
                    rec["dense_tokens"] += tokens
            if hasattr(c, "elements"):
                rec["sent"][name] = rec["sent"].get(name, 0) + c.sent
                rec["elements"][name] = rec["elements"].get(name, 0) + c.elements
                rec["dense_sent"][name] = rec["dense_sent"].get(name, 0) + c.dense_sent
                rec["dense_elements"][name] = (rec["dense_elements"].get(name, 0)
                                               + c.dense_tokens * _d_in(cfg, name))
    return out


def _d_in(cfg, name):
    return cfg.mlp_ratio * cfg.dim if name == "fc2" else cfg.dim


def sparsity(blocks, clips):
    """The :class:`hw.cycles.BlockSparsity` of each block of one clip, from a result's
    measured workload (averaged over ``clips``)."""
    from hw.cycles import BlockSparsity
    out = []
    for rec in blocks:
        tokens = rec["tokens"] // clips
        sent = {n: rec["sent"][n] / rec["elements"][n] for n in rec["sent"]
                if rec["elements"].get(n)}
        dense_sent = {n: rec["dense_sent"][n] / rec["dense_elements"][n]
                      for n in rec["dense_sent"] if rec["dense_elements"].get(n)}
        rho = rec["kept"] / rec["entries"] if rec["entries"] else 1.0
        out.append(BlockSparsity(tokens, sent, dense_tokens=round(rec["dense_tokens"] / clips),
                                 rho=min(1.0, max(rho, 1e-6)), dense_sent=dense_sent))
    return out


def model_cycles(qmodel, blocks, clips):
    """Cycles of one clip on the ``vidt`` preset (:func:`hw.cycles.model_cycles`)."""
    from hw.config import preset
    from hw.cycles import model_cycles as cycles_of
    cfg = qmodel.cfg
    return cycles_of(preset("vidt"), sparsity(blocks, clips), d=cfg.dim, heads=cfg.heads,
                     mlp_ratio=cfg.mlp_ratio, embed_in=cfg.tubelet * cfg.patch ** 2
                     * cfg.in_chans, classes=cfg.num_classes)["cycles"]


def paired_interval(correct, reference, resamples=BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """95 % interval (percentile bootstrap, pp) of ``top1(correct) - top1(reference)``, both
    bool ``[clips]`` on the same clips: each resample draws clips with replacement and takes the
    difference on the same draw, so what both get right or wrong cancels."""
    diff = correct.double() - reference.double()
    n = diff.numel()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=g)
    means = 100.0 * diff[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return round(lo, 2), round(hi, 2)


def costs(result, clips=1):
    """Per clip: the point's own dense MACs (after its token pruning), and the work of each
    cost column (:data:`COST_KINDS`). ``result`` is anything with an ``Execution``'s ``macs``
    (an evaluation's result, or a :class:`golden.sparse.SparseExecution` after one clip)."""
    dense = sum(m[0] for m in result.macs.values()) // clips
    cols = dict.fromkeys(COST_KINDS, 0)
    for (_, layer), (_, performed) in result.macs.items():
        cols[_KIND_OF.get(layer, "array")] += performed
    return dense, {k: v // clips for k, v in cols.items()}


def _record(point, result, reference, clips, dense_cycles, qmodel):
    # Savings are against the dense int8 model (the reference), not the point's own dense
    # MACs, which shrink with its token pruning.
    dense, _ = costs(reference, clips)
    _, cols = costs(result, clips)
    total = sum(cols.values())
    by_layer = {}
    for (_, layer), (d, p) in result.macs.items():
        e = by_layer.setdefault(layer, [0, 0])
        e[0] += d
        e[1] += p
    cycles = model_cycles(qmodel, result.blocks, clips)
    rec = dict(label=point.label, technique=point.technique, params=point.params(),
               top1=round(result.top1, 2),
               diff_pp=round(result.top1 - reference.top1, 2),
               ci95_pp=list(paired_interval(result.correct, reference.correct)),
               changed=round(float((result.preds != reference.preds).double().mean()), 4),
               ideal_saving=round(dense / total, 3),
               work_per_clip=total, costs_per_clip=cols,
               macs_by_layer={k: dict(dense=by_layer[k][0] // clips,
                                      performed=by_layer[k][1] // clips)
                              for k in LAYER_KINDS if k in by_layer},
               cycles=cycles, cycle_saving=round(dense_cycles / cycles, 3) if dense_cycles
               else 1.0, seconds=round(result.seconds, 1))
    return rec


def points(chosen: dict, full: bool = False):
    """The reported points from the search result's validation choices (``chosen``:
    :data:`golden.search.RESULT`'s ``"chosen"``): ``[(group, Point)]``."""
    out, seen = [("reference", DENSE_INT8)], set()
    for key in ("delta", "sta", "attention", "uniform", "search"):
        c = chosen[key]
        params = json.dumps(c["params"], sort_keys=True)
        if params in seen:      # the search chose a uniform point: it is reported once
            continue
        seen.add(params)
        out.append(("chosen", Point.from_dict(c["label"], c["technique"], c["params"])))
    policy = chosen["attention"]["params"]
    rhos = (0.5, 0.25, 0.125, 0.0625) if full else (0.25, 0.125)
    for g in GRANULARITIES:
        for rho in rhos:
            out.append(("curve", Point(f"{g} rho={rho:g}", "attention", rho=rho,
                                       granularity=g, order=policy["order"],
                                       keep=policy["keep"], margin=policy["margin"])))
    for rho in rhos:
        out.append(("curve", Point(f"subvector frame-order rho={rho:g}", "attention", rho=rho,
                                   granularity="subvector", order="frame",
                                   keep=policy["keep"], margin=policy["margin"])))
    return out


def _params_text(p):
    parts = []
    if p["tau"] is not None:
        parts.append(f"τ={p['tau']}")
    if p["r"]:
        parts.append(f"r={p['r']}")
    rhos = p["rho"] if isinstance(p["rho"], (list, tuple)) else [p["rho"]]
    if any(r < 1 for r in rhos):
        parts.append(f"ρ={p['rho']} {p['granularity']} {p['order']}-order {p['keep']}"
                     + (f" m={p['margin']:g}" if p["keep"] == "threshold" else ""))
    return ", ".join(parts) or "—"


def _markdown(report) -> str:
    int8 = report["dense_int8_top1"]
    lines = [
        f"Benchmark VidT ({report['model']['parameters']} parameters), "
        f"{report['clips']} `{report['split']}` clips (test: reporting only; every choice made "
        f"on `val` clips, {report['search']['validation_clips']} screening and "
        f"{report['search']['confirm_clips']} confirming, by `{report['search']['command']}`)"
        f", sub-vector length v = {report['v']}.",
        f"Dense float top-1 **{report['dense_float_top1']:.2f} %**, dense int8 top-1 "
        f"**{int8:.2f} %** ({report['dense_macs_per_clip'] / 1e6:.1f} M MACs per clip). "
        f"Intervals: paired 95 % bootstrap of the difference from dense int8 "
        f"({BOOTSTRAP} resamples of the clips).",
        "",
        "| point | settings | top-1 (%) | vs int8 (pp) | 95 % interval (pp) | changed | "
        "ideal saving | array MACs (M) | predictor (M) | compares (M) | STA (M) | "
        "cycle saving |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown = set()
    for group in ("reference", "chosen", "curve"):
        for p in report["points"]:
            key = json.dumps(p["params"], sort_keys=True)
            if p["group"] != group or key in shown:  # a chosen point on a curve: one row
                continue
            shown.add(key)
            c = p["costs_per_clip"]
            lo, hi = p["ci95_pp"]
            lines.append(
                f"| {p['label']} | {_params_text(p['params'])} | {p['top1']:.2f} | "
                f"{p['diff_pp']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {100 * p['changed']:.1f} % | "
                f"{p['ideal_saving']:.2f}x | {c['array'] / 1e6:.2f} | {c['predictor'] / 1e6:.2f} "
                f"| {c['compare'] / 1e6:.2f} | {c['sta'] / 1e6:.2f} | {p['cycle_saving']:.2f}x |")
    best = report["best_within_budget"]
    lines.append("")
    if best:
        lines.append(
            f"Best point losing less than {LOSS_BUDGET:g} pp against dense int8 (test point "
            f"estimate): "
            f"**{best['label']}**, {best['ideal_saving']:.2f}x ideal saving at "
            f"{best['diff_pp']:+.2f} pp (95 % interval [{best['ci95_pp'][0]:+.2f}, "
            f"{best['ci95_pp'][1]:+.2f}]). RTSA reports {RTSA_SAVING[0]}x-{RTSA_SAVING[1]}x "
            f"at < 1 % loss.")
    else:
        lines.append(f"No point within {LOSS_BUDGET:g} pp of dense int8.")
    return "\n".join(lines) + "\n"


def _plot(report, search, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.axvspan(*RTSA_SAVING, color="tab:green", alpha=0.12,
               label=f"RTSA: {RTSA_SAVING[0]}-{RTSA_SAVING[1]}x at <1% loss")
    ax.axhline(0, color="black", lw=0.8, label="dense int8")
    ax.axhline(-LOSS_BUDGET, color="black", ls="--", lw=0.8, label="-1 pp budget")
    front = sorted(search["front"], key=lambda e: e["ideal_saving"])
    ax.plot([e["ideal_saving"] for e in front], [e["diff_pp"] for e in front], color="grey",
            ls=":", marker=".", label=f"search front ({search['validation_clips']} validation "
                                      "screening clips: optimistic)")
    tried = [e for v in search.get("confirmed", {}).values() for e in v]
    ax.scatter([e["ideal_saving"] for e in tried], [e["diff_pp"] for e in tried],
               facecolors="none", edgecolors="grey", s=50,
               label=f"confirmed ({search['validation_clips'] + search.get('confirm_clips', 0)}"
                     " validation clips)")
    styles = {"delta": ("tab:blue", "o"), "sta": ("tab:orange", "^"),
              "attention": ("tab:purple", "D"), "combined": ("tab:red", "*"),
              "search": ("tab:red", "P")}
    for p in report["points"]:
        if p["group"] != "chosen":
            continue
        color, marker = styles[p["technique"]]
        lo, hi = p["ci95_pp"]
        ax.errorbar(p["ideal_saving"], p["diff_pp"],
                    yerr=[[p["diff_pp"] - lo], [hi - p["diff_pp"]]], color=color, marker=marker,
                    ms=8, capsize=3, label=f"{p['label']} (test)", zorder=3)
    ax.set_xscale("log")
    ticks = [1, 1.5, 2, 3, 4, 5, 6]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("ideal computation saving (dense MACs / all work, overheads included)")
    ax.set_ylabel("top-1 difference from dense int8 (pp)")
    ax.set_title(f"Benchmark VidT: accuracy against computation saved\n"
                 f"({report['clips']} test clips, 95 % paired intervals)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_granularity(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"subvector": ("tab:purple", "D"), "block": ("tab:brown", "P"),
              "element": ("tab:pink", "X")}
    curves = {}
    for p in report["points"]:
        if p["group"] != "curve":
            continue
        order = p["params"]["order"]
        key = (p["params"]["granularity"], order)
        att = p["macs_by_layer"]
        dense = att["qk"]["dense"] + att["av"]["dense"]
        work = sum(att[k]["performed"] for k in ("qk", "av", "predictor", "select") if k in att)
        curves.setdefault(key, []).append((dense / work, p["diff_pp"], p["ci95_pp"]))
    for (g, order), pts in sorted(curves.items()):
        pts.sort()
        color, marker = styles[g]
        ls = "-" if order != "frame" or g == "element" else "--"
        ax.errorbar([x for x, _, _ in pts], [y for _, y, _ in pts],
                    yerr=[[y - ci[0] for _, y, ci in pts], [ci[1] - y for _, y, ci in pts]],
                    color=color, marker=marker, ls=ls, capsize=3,
                    label=f"{g} ({order} order)", alpha=0.6 if ls == "--" else 1.0)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(-LOSS_BUDGET, color="black", ls="--", lw=0.8)
    ax.set_xlabel("attention saving (dense QK^T + AV MACs / kept MACs + predictor + selection)")
    ax.set_ylabel("top-1 difference from dense int8 (pp)")
    ax.set_title(f"Granularity at equal predictor budget ({report['clips']} test clips)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(clips: int, out: Path, *, full: bool = False, batch: int = 50, search_path=None,
        only=None) -> dict:
    """Report the search result's points on ``clips`` test clips; write the report files into
    ``out``. ``only``: labels to restrict the points to (dense int8 is always run)."""
    from golden import search as search_mod
    from golden.dataset import to_float
    from hw.config import preset
    t0 = time.time()
    search = search_mod.load(search_path)
    v = preset("default").lanes
    meta = benchmark.metadata()
    print(f"benchmark model: {benchmark.WEIGHTS.name} ({meta['command']})", flush=True)
    print(f"choices: {search['path']} ({search['command']}, {search['validation_clips']} "
          "validation clips)", flush=True)
    fmodel = benchmark.float_model()
    print(f"quantising on {benchmark.CALIB_CLIPS} training clips ...", flush=True)
    qmodel = benchmark.int_model()
    print(f"generating {clips} {benchmark.EVAL_SPLIT} clips ...", flush=True)
    videos, labels = benchmark.clips(clips)
    with torch.no_grad():
        fpred = torch.cat([fmodel(to_float(videos[i:i + batch])).argmax(-1)
                           for i in range(0, clips, batch)])
    float_top1 = 100.0 * float((fpred == labels).double().mean())
    print(f"dense float: top-1 {float_top1:.2f} %", flush=True)

    todo = [(g, p) for g, p in points(search["chosen"], full)
            if only is None or g == "reference" or p.label in only]
    records, reference, dense_cycles, done = [], None, None, {}
    for i, (group, point) in enumerate(todo):
        key = json.dumps(point.params(), sort_keys=True)    # a chosen point on a curve: once
        res = done.get(key) or evaluate(point, qmodel, videos, labels, v=v, batch=batch,
                                        what=f"[{i + 1}/{len(todo)}] ")
        done[key] = res
        if reference is None:
            reference = res
            dense_cycles = model_cycles(qmodel, res.blocks, clips)
        rec = dict(group=group, **_record(point, res, reference, clips, dense_cycles, qmodel))
        records.append(rec)
        _progress(f"[{i + 1}/{len(todo)}] {point.label}: top-1 {rec['top1']:.2f} % "
                  f"({rec['diff_pp']:+.2f} pp, [{rec['ci95_pp'][0]:+.2f}, "
                  f"{rec['ci95_pp'][1]:+.2f}]), changed {100 * rec['changed']:.1f} %, "
                  f"saving {rec['ideal_saving']:.2f}x ({rec['seconds']:.0f} s)", final=True)
    int8 = records[0]
    # "< 1 pp loss": strictly less.
    within = [p for p in records if p["group"] == "chosen"
              and p["diff_pp"] > -LOSS_BUDGET and p["ideal_saving"] > 1]
    best = max(within, key=lambda p: p["ideal_saving"]) if within else None
    report = dict(
        model=dict(weights=benchmark.WEIGHTS.name, command=meta["command"],
                   parameters=sum(p.numel() for p in fmodel.parameters()),
                   training_heldout_top1=100.0 * meta["heldout_top1"]),
        split=benchmark.EVAL_SPLIT, clips=clips, v=v, calibration_clips=benchmark.CALIB_CLIPS,
        search=dict(path=search["path"], command=search["command"],
                    validation_clips=search["validation_clips"],
                    validation_start=search["validation_start"],
                    confirm_clips=search["confirm_clips"],
                    select_margin_pp=search["select_margin_pp"]),
        dense_float_top1=round(float_top1, 2), dense_int8_top1=int8["top1"],
        dense_macs_per_clip=int8["work_per_clip"], dense_cycles=dense_cycles,
        points=records, loss_budget_pp=LOSS_BUDGET,
        best_within_budget=None if best is None else {
            k: best[k] for k in ("label", "top1", "diff_pp", "ci95_pp", "ideal_saving",
                                 "cycle_saving", "params")},
        rtsa_reference=dict(ideal_saving=list(RTSA_SAVING), loss_pp=1.0),
        bootstrap=dict(resamples=BOOTSTRAP, seed=BOOTSTRAP_SEED),
        wall_time_s=round(time.time() - t0, 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _plot(report, search, out / "top1_vs_saving.png")
    _plot_granularity(report, out / "granularity.png")
    print(_markdown(report))
    print(f"wrote {out / 'report.json'}, report.md, top1_vs_saving.png, granularity.png "
          f"({report['wall_time_s']:.0f} s)", flush=True)
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("build/eval"))
    p.add_argument("--clips", type=int, default=None,
                   help="test clips (default 500; 3000 with --full)")
    p.add_argument("--full", action="store_true", help="3000 clips and a denser curve")
    p.add_argument("--only", nargs="*", default=None, help="report only these point labels")
    p.add_argument("--search", type=Path, default=None, help="search result (default: committed)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args(argv)
    clips = args.clips or (3000 if args.full else 500)
    if clips < 1:
        p.error("--clips must be positive")
    torch.set_num_threads(args.threads)
    return run(clips, args.out, full=args.full, batch=args.batch, search_path=args.search,
               only=args.only)


if __name__ == "__main__":
    main()
