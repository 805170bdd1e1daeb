"""``make cycles``: the cycle model (:mod:`hw.cycles`) extrapolated to video transformers no RTL
simulation reaches, and the one run-through array against split-engine designs.

What it runs, all from the model (``make bench`` checks the model against the RTL, within
:data:`hw.cycles.TOLERANCE`):

* **Workloads** (:data:`WORKLOADS`): a VideoMAE-B-like model (d = 768, 12 heads, 12 blocks,
  MLP 4 d, tubelet embedding of 2 x 16 x 16 x 3 = 1536 inputs, 400 classes) and a ViT-S-like
  one (d = 384, 6 heads), on 8 temporal positions of 49, 98 or 196 spatial tokens: 392, 784, 1568
  tokens a clip (16 x 224^2 with 2 x 16 x 16 tubelets is 1568), attention over the whole clip.
* **Sparsity** measured on the benchmark model (:func:`measure`): ``golden`` on
  :data:`STAT_CLIPS` clips of the *validation* split at the bench's operating point (delta
  tau = 4 on the four projections, STA r = 8 of 49 positions, sub-vector attention): per
  block the fraction of its inputs a delta token sends in each projection and the fraction
  of tokens run dense (no reference). Block ``i`` of a 12-block model takes benchmark block
  ``i * 4 // 12``'s figures; STA keeps its schedule (:class:`golden.sta.STAPruner` over 12
  blocks, ``r`` scaled with the positions per frame); rho is swept.
* **Hardware**: presets ``default`` (16 x 8) and ``large`` (32 x 16), their buffers sized to
  the workload (``max_d``, ``max_heads``, ``max_tokens``: the cycle model does not depend on
  them beyond the skip FIFO's depth), and rows x lanes at the ``large`` MAC count
  (:data:`SHAPES`).
* **Split engines** (:func:`split_rows`): the same MACs as two arrays, the projections on one
  and the predictor and attention on the other (the shape of accelerators with dedicated
  attention engines beside a GEMM engine, ViTCoD- or HeatViT-like), each array sized at design
  time for one token count in proportion to its share of the performed MACs there; and the
  best split per token count (an oracle that re-sizes the hardware for each resolution).

Reported per point: cycles, array utilisation (busy beats / cycles), MAC utilisation
(performed MACs / (cycles x MACs a cycle)), sparse against dense, and time per clip at
:data:`CLOCK_MHZ`, an assumption (no board report exists at these sizes). Left out: loading
weights (1.7 Mbit in the benchmark, 85 M parameters here: from DRAM at a rate this model does
not know), the host's STA selection between stage blocks, input and output links.

Writes ``build/cycles/cycles.json``, ``cycles.md`` and ``throughput.png``.

    python -m sim.bench_cycles [--out build/cycles] [--quick]
"""

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hw import cycles
from hw.config import preset

REPO = Path(__file__).resolve().parent.parent

WORKLOADS = {
    "videomae_b": dict(d=768, heads=12, depth=12, mlp_ratio=4, embed_in=1536, classes=400),
    "vit_s": dict(d=384, heads=6, depth=12, mlp_ratio=4, embed_in=1536, classes=400),
}
#: Spatial positions per frame; 8 frames (temporal positions) a clip.
FRAMES = 8
POSITIONS = (49, 98, 196)
#: The benchmark's operating point the statistics come from (``make bench``'s blocks).
TAU, STA_R, STA_POSITIONS = 4, 8, 49
RHOS = (0.25, 0.5, 0.75)
STAT_CLIPS = 16
#: The clock the times assume (not measured: see the module docstring).
CLOCK_MHZ = 200
#: Rows x lanes at the ``large`` preset's 512 MACs a cycle.
SHAPES = ((64, 8), (32, 16), (16, 32), (8, 64))
#: Clips in flight in the split comparison: one (latency: a block's phases one after the other)
#: and two (throughput: one clip's attention beside the other's projections).
CLIPS = (1, 2)


def _progress(done, total, t0, what):
    bar = "#" * (30 * done // total)
    print("\r[{:<30}] {}/{} {:.0f} s  {:<40}".format(bar, done, total, time.time() - t0, what),
          end="" if done < total else "\n", flush=True)


def measure(clips=STAT_CLIPS):
    """Per benchmark block: ``{"sent": {layer: fraction}, "dense": fraction}`` on ``clips``
    validation clips at delta ``TAU`` with STA ``STA_R`` and sub-vector attention."""
    from golden import benchmark
    from golden.sparse import DELTA_LAYERS, SparseExecution
    from golden.sta import STAPruner
    from golden.subvector import SubvectorAttention
    q = benchmark.int_model()
    videos, _ = benchmark.clips(clips, split="val")
    cfg = q.cfg
    run = SparseExecution(cfg.n_s, tau=TAU, attention=SubvectorAttention(8, 0.5),
                          pruner=STAPruner(cfg.n_t, cfg.n_s, STA_R, cfg.depth))
    q.forward(videos, run)
    stats = []
    for b in range(cfg.depth):
        c = {n: run.macs[(b, n)] for n in DELTA_LAYERS}
        stats.append({"sent": {n: c[n].sent / c[n].elements for n in DELTA_LAYERS},
                      "dense": c["qkv"].dense_tokens / c["qkv"].tokens})
    return {"blocks": stats, "depth": cfg.depth, "clips": clips, "split": "val", "tau": TAU,
            "sta_r": STA_R, "positions": cfg.n_s, "frames": cfg.n_t}


def hardware(name, wl, tokens):
    """Preset ``name`` (or ``"RxV"``) with buffers for workload ``wl`` at ``tokens``."""
    if "x" in name:
        rows, lanes = map(int, name.split("x"))
        base = preset("large").replace(rows=rows, lanes=lanes, requant_lanes=lanes,
                                       decode_width=max(1, lanes // 2),
                                       bitmap_word=max(32, lanes))
    else:
        base = preset(name)
    return base.replace(max_d=wl["d"], max_heads=wl["heads"], max_tokens=max(tokens, 392),
                        name=name)


def model_blocks(stats, wl, positions, mode, rho, clips=1):
    """The :class:`hw.cycles.BlockSparsity` of every block of ``wl`` at ``positions`` spatial
    tokens a frame, ``clips`` clips in flight (one attention sequence each, one after the
    other through every pass). ``mode``: ``dense``, ``delta`` (delta projections),
    ``delta_sv`` (and sub-vector attention at ``rho``), ``all`` (and STA)."""
    from golden.sta import STAPruner
    n0 = FRAMES * positions
    depth = wl["depth"]
    if mode == "all":
        r = round(STA_R * positions / STA_POSITIONS)
        tokens = STAPruner(FRAMES, positions, r, depth).tokens_per_block
    else:
        tokens = [n0] * depth
    out = []
    for i, n in enumerate(tokens):
        st = stats["blocks"][i * stats["depth"] // depth]
        if mode == "dense":
            out.append(cycles.BlockSparsity(n * clips, sequences=clips))
            continue
        out.append(cycles.BlockSparsity(
            n * clips, dict(st["sent"]), dense_tokens=clips * min(n, round(st["dense"] * n)),
            rho=1.0 if mode == "delta" else rho, sequences=clips))
    return out


def evaluate(point):
    """One point: ``point`` a dict (workload, hw, positions, mode, rho, split); returns it with
    the model's figures."""
    wl = WORKLOADS[point["workload"]]
    tokens = FRAMES * point["positions"]
    cfg = hardware(point["hw"], wl, tokens)
    clips = point.get("clips", 1)
    blocks = model_blocks(point["stats"], wl, point["positions"], point["mode"], point["rho"],
                          clips)
    split = point.get("split")
    res = cycles.model_cycles(cfg, blocks, d=wl["d"], heads=wl["heads"],
                              mlp_ratio=wl["mlp_ratio"], embed_in=wl["embed_in"],
                              classes=wl["classes"], split=split)
    macs_per_cycle = cfg.macs_per_cycle
    out = {k: v for k, v in point.items() if k != "stats"}
    # Figures per clip: a pass with several clips in flight counts its cycles once for all.
    out.update(tokens=tokens, cycles=res["cycles"] // clips, busy=res["busy"] // clips,
               macs=res["macs"] // clips,
               macs_per_cycle=macs_per_cycle, array_utilisation=res["busy"] / res["cycles"],
               mac_utilisation=res["macs"] / (res["cycles"] * macs_per_cycle),
               ms_per_clip=res["cycles"] / clips / (CLOCK_MHZ * 1e3),
               block_cycles=[b.cycles for b in res["blocks"]],
               attention_share=_attention_share(res))
    if split is not None:
        # Two arrays: utilisation over both (busy beats per row scale with the array's rows).
        out["array_utilisation"] = None
    return out


def _attention_share(res):
    """Busy beats of the predictor and attention over all busy beats (one array)."""
    att = sum(b.busy.get("attention", 0) + b.busy.get("predict", 0) for b in res["blocks"])
    return att / max(1, res["busy"])


def split_rows(rows, share):
    """Attention rows of a split sized for an attention ``share`` of the work: the nearest
    of ``1 .. rows - 1``."""
    return min(rows - 1, max(1, round(rows * share)))


def _run(points, workers, t0, label):
    out = []
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for k, res in enumerate(ex.map(evaluate, points)):
            out.append(res)
            _progress(k + 1, len(points), t0, label)
    return out


def markdown(report):
    m = report["meta"]
    lines = ["# The cycle model extrapolated: video transformers on one run-through array", "",
             "From `hw.cycles` (validated against the RTL by `make bench`, within {:.0%}); "
             "times at an assumed {} MHz. Sparsity measured on the benchmark model ({} "
             "validation clips, delta tau = {}, STA r = {} of {} positions, scaled), rho = "
             "{}. Left out: weight loading, the host's STA selection, the links.".format(
                 cycles.TOLERANCE, CLOCK_MHZ, m["stats"]["clips"], TAU, STA_R, STA_POSITIONS,
                 m["rho"]), "",
             "## Cycles per clip", "",
             "| workload | hardware | tokens | dense cycles | sparse cycles | speed-up | "
             "array busy (sparse) | MAC utilisation (sparse) | attention share | ms / clip "
             "(sparse) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["grid"]:
        lines.append("| {workload} | {hw} | {tokens} | {dense:,} | {cycles:,} | {speedup:.2f}x "
                     "| {array_utilisation:.1%} | {mac_utilisation:.1%} | {attention_share:.1%} "
                     "| {ms_per_clip:.2f} |".format(**r))
    lines += ["", "## Sparsity sweep (videomae_b, large)", "",
              "| tokens | mode | rho | cycles | speed-up over dense |", "|---:|---|---:|---:|---:|"]
    for r in report["sweep"]:
        lines.append("| {tokens} | {mode} | {rho} | {cycles:,} | {speedup:.2f}x |".format(**r))
    lines += ["", "## Rows x lanes at 512 MACs a cycle (videomae_b, {} tokens)".format(
        m["shape_tokens"]), "",
        "| rows x lanes | sparse cycles | dense cycles | MAC utilisation (sparse) |",
        "|---|---:|---:|---:|"]
    for r in report["shapes"]:
        lines.append("| {hw} | {cycles:,} | {dense:,} | {mac_utilisation:.1%} |".format(**r))
    lines += ["", "## One shared array against split engines (videomae_b, large, sparse)", "",
              "Split: the projections on one array, predictor and attention on another, the "
              "same 32 rows x 16 lanes in all; sized at a design token count by the "
              "attention share of the busy beats there, or the best split found per token "
              "count (rows in steps of 8). Cycles per clip.", "",
              "| tokens | clips in flight | shared | " + " | ".join(
                  "split sized at {} ({} + {} rows)".format(t, 32 - a, a)
                  for t, a in m["split_sizes"]) + " | best split | shared speed-up over "
              "each |", "|---:|---:|---:|" + "---:|" * (len(m["split_sizes"]) + 2)]
    for r in report["splits"]:
        sized = " | ".join("{:,}".format(c) for c in r["sized"])
        gains = ", ".join("{:.2f}x".format(g) for g in r["gains"])
        lines.append("| {} | {} | {:,} | {} | {:,} ({} + {}) | {} |".format(
            r["tokens"], r["clips"], r["shared"], sized, r["best"], 32 - r["best_rows"], r["best_rows"],
            gains))
    lines += ["", m["verdict"], ""]
    return "\n".join(lines)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    f = CLOCK_MHZ * 1e6
    fig, axes = plt.subplots(1, len(CLIPS), figsize=(11, 4.2), sharey=True)
    for ax, c in zip(axes, CLIPS):
        s = [r for r in report["splits"] if r["clips"] == c]
        toks = [r["tokens"] for r in s]
        ax.plot(toks, [f / r["shared"] for r in s], "o-", color="tab:red",
                label="one shared array (run-through)")
        for k, (t, a) in enumerate(report["meta"]["split_sizes"]):
            ax.plot(toks, [f / r["sized"][k] for r in s], "s--",
                    label="split, sized at {} tokens ({} + {} rows)".format(t, 32 - a, a))
        ax.plot(toks, [f / r["best"] for r in s], "^:", color="grey",
                label="split, best per token count (oracle)")
        ax.set_xlabel("tokens per clip (8 frames)")
        ax.set_title("{} clip{} in flight".format(c, "s" if c > 1 else ""))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clips / s at {} MHz (assumed)".format(CLOCK_MHZ))
    axes[0].legend(fontsize=8)
    fig.suptitle("VideoMAE-B-like on 32 x 16 PEs: delta + STA + sub-vector (rho = {})"
                 .format(report["meta"]["rho"]))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "cycles")
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="two token counts, no sweeps")
    args = ap.parse_args(argv)
    t0 = time.time()
    print("cycles: sparsity statistics of the benchmark model ({} validation clips) ..."
          .format(STAT_CLIPS), flush=True)
    stats = measure()
    positions = POSITIONS[::2] if args.quick else POSITIONS

    def pt(wl, hw, p, mode, rho=args.rho, **kw):
        return dict(workload=wl, hw=hw, positions=p, mode=mode, rho=rho, stats=stats, **kw)

    grid_pts = [pt(wl, hw, p, mode) for wl in WORKLOADS for hw in ("default", "large")
                for p in positions for mode in ("dense", "all")]
    sweep_pts = [] if args.quick else [
        pt("videomae_b", "large", p, mode, rho) for p in positions
        for mode, rho in (("delta", 1.0), ("delta_sv", args.rho), ("all", 0.25),
                          ("all", 0.75))]
    shape_p = positions[-1]
    shape_pts = [pt("videomae_b", "{}x{}".format(r, v), shape_p, mode)
                 for r, v in SHAPES for mode in ("dense", "all")]
    res = _run(grid_pts + sweep_pts + shape_pts, args.workers, t0, "grid, sweeps, shapes")
    grid_res, rest = res[:len(grid_pts)], res[len(grid_pts):]
    sweep_res, shape_res = rest[:len(sweep_pts)], rest[len(sweep_pts):]
    dense = {(r["workload"], r["hw"], r["tokens"]): r["cycles"] for r in res
             if r["mode"] == "dense"}
    grid = [dict(r, dense=dense[(r["workload"], r["hw"], r["tokens"])],
                 speedup=dense[(r["workload"], r["hw"], r["tokens"])] / r["cycles"])
            for r in grid_res if r["mode"] != "dense"]
    sweep = [dict(r, speedup=dense[("videomae_b", "large", r["tokens"])] / r["cycles"])
             for r in sweep_res]
    shapes = [dict(r, dense=dense[("videomae_b", r["hw"], r["tokens"])])
              for r in shape_res if r["mode"] != "dense"]

    # Split engines: sized by the attention share of the shared array's busy beats.
    shared = {r["positions"]: r for r in grid_res
              if (r["workload"], r["hw"], r["mode"]) == ("videomae_b", "large", "all")}
    rows = preset("large").rows
    design = [positions[0], positions[-1]]
    sizes = [(FRAMES * p, split_rows(rows, shared[p]["attention_share"])) for p in design]
    search = list(range(8, rows, 8))
    split_pts = [pt("videomae_b", "large", p, "all", split=(rows - a, a), clips=c)
                 for c in CLIPS for p in positions
                 for a in sorted({a for _, a in sizes} | set(search))]
    split_pts += [pt("videomae_b", "large", p, "all", clips=c) for c in CLIPS[1:]
                  for p in positions]
    split_res = _run(split_pts, args.workers, t0, "split engines")
    by = {(r["clips"], r["positions"], (r.get("split") or (0, 0))[1]): r["cycles"]
          for r in split_res}
    by.update({(1, p, 0): shared[p]["cycles"] for p in positions})
    splits = []
    for c in CLIPS:
        for p in positions:
            sized = [by[(c, p, a)] for _, a in sizes]
            best_rows = min(search, key=lambda a: by[(c, p, a)])
            best = by[(c, p, best_rows)]
            sh = by[(c, p, 0)]
            splits.append({"tokens": FRAMES * p, "clips": c, "shared": sh, "sized": sized,
                           "best": best, "best_rows": best_rows,
                           "gains": [x / sh for x in sized + [best]]})
    one = [r for r in splits if r["clips"] == 1]
    two = [r for r in splits if r["clips"] == CLIPS[-1]]
    lo, hi = one[0], one[-1]
    verdict = ("The shared array against the split sized at {} tokens: {:.2f}x at {} tokens, "
               "{:.2f}x at {}; against the split sized at {}: {:.2f}x at {}, {:.2f}x at {}; "
               "against the best split per token count: {:.2f}x .. {:.2f}x.").format(
        sizes[0][0], lo["gains"][0], lo["tokens"], hi["gains"][0], hi["tokens"],
        sizes[-1][0], lo["gains"][-2], lo["tokens"], hi["gains"][-2], hi["tokens"],
        min(r["gains"][-1] for r in one), max(r["gains"][-1] for r in one))
    verdict += (" With {} clips in flight (a clip's attention beside the next clip's "
                "projections): {:.2f}x .. {:.2f}x against the split sized at {}, {:.2f}x .. "
                "{:.2f}x against the best split.").format(
        CLIPS[-1], min(r["gains"][0] for r in two), max(r["gains"][0] for r in two),
        sizes[0][0], min(r["gains"][-1] for r in two), max(r["gains"][-1] for r in two))
    meta = {"stats": stats, "rho": args.rho, "clock_mhz": CLOCK_MHZ, "workloads": WORKLOADS,
            "shape_tokens": FRAMES * shape_p, "split_sizes": sizes, "verdict": verdict,
            "seconds": round(time.time() - t0, 1)}
    report = {"meta": meta, "grid": grid, "sweep": sweep, "shapes": shapes, "splits": splits}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cycles.json").write_text(json.dumps(report, indent=1))
    (args.out / "cycles.md").write_text(markdown(report))
    plot(report, args.out / "throughput.png")
    print(markdown(report))
    print("wrote {}/cycles.{{json,md}}, throughput.png ({:.0f} s)".format(args.out,
                                                                       time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
