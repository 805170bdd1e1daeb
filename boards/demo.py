"""``make demo``: a clip in, a class out, through the host link.

The host library (:mod:`boards.link`, pyserial) loads every constant of the model over the
UART link, sends the clip's pixels, makes STA's selection from the chip's reports
(:mod:`boards.host`), and reads the logits and every counter back. Without a port the chip is
the generated Verilog of :class:`hw.link.LinkedModel` under Verilator, behind a
pseudo-terminal (:mod:`sim.link_sim`); ``--port`` (``make demo PORT=/dev/ttyUSB0``) talks to a
board instead.

    python -m boards.demo [--port PORT] [--model tiny|bench] [--clip N] [--tau 4 --rho 0.75 --r 8]

``--model tiny`` (default): the seeded two-block model of the tests (16 tokens, 4 classes) on
the 2 x 4 array; about a minute in simulation once the Verilator model is built.
``--model bench``: the trained benchmark model (392 tokens, 16 classes) on the ``vidt`` array,
a clip of its test split; much longer in simulation (the constants cross the UART at 40
simulated cycles a byte).

Writes ``build/demo/demo.json`` (logits from the chip and from the golden model, the classes,
the label, cycles per pass (each pass is a block; the first also embeds, the last also
classifies) against the cycle model's, MACs performed against the dense model's, the tokens
STA keeps, the time a clip takes at the ULX3S build's clock and its target, and at its Fmax when
``build/ulx3s/report.json`` exists, link frames and wall time) and ``build/demo/demo.png``
(the clip's frames with the tokens STA dropped hatched, and the cycles of every pass), and
prints a summary; exits non-zero when the chip's logits differ from the golden model's.
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: No board holds the whole model (python -m boards.build --design model_link says why: its
#: memories need about three times the LFE5U-85F's block RAM); say so instead of timing out on
#: a board that cannot answer.
BOARD_HINT = ("no response from {port}: only the whole model's bitstream (hw.link.LinkedModel) "
              "answers this demo, and it fits no board yet (make bitstream DESIGN=model_link "
              "says why; the boards hold the run-through and the PE array behind the link)")


def _job(args):
    from sim.model_job import TINY_STREAMED, model_job, tiny_model
    if args.model == "tiny":
        q, videos = tiny_model(7301)
        clip = 1 if args.clip is None else args.clip
        # One block's constants on chip at a time, each block's streamed before its pass: what
        # a board whose block RAM holds fewer blocks than the model has does.
        video, label, cfg = videos[clip], None, TINY_STREAMED
        settings = dict(tau=2, rho=0.5, r=1)
    else:
        from golden import benchmark
        from hw.config import preset
        clip = 0 if args.clip is None else args.clip
        videos, labels = benchmark.clips(1, start=clip)
        q, video, label, cfg = benchmark.int_model(), videos[0], int(labels[0]), preset("vidt")
        settings = dict(tau=4, rho=0.75, r=8)
    for k in settings:
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    if getattr(args, "max_layers", None) is not None:
        cfg = cfg.replace(max_layers=args.max_layers, name="{}_l{}".format(cfg.name,
                                                                           args.max_layers))
    return cfg, clip, label, settings, q, video, model_job(cfg, q, video, **settings)


def _work(q, video, job, lanes):
    """MACs of the clip (:func:`golden.eval.costs`): the dense int8 model's, what the point's
    array performs and its overheads (predictor, delta compares, STA scoring in the host)."""
    from types import SimpleNamespace

    from golden.eval import DENSE_INT8, costs, execution

    def tally(run):
        return SimpleNamespace(macs={k: (c.dense, c.performed) for k, c in run.macs.items()})
    dense_run = execution(DENSE_INT8, q, lanes)
    q.forward(video[None], dense_run)
    dense, _ = costs(tally(dense_run))
    _, cols = costs(tally(job.golden_run))
    total = sum(cols.values())
    return dict(dense=dense, **cols, total=total, saving=round(dense / total, 3))


def _pass_names(job):
    names = []
    blocks = len(job.blocks.blocks)
    head_pass = bool(job.blocks.blocks[-1].reports)
    for k in range(blocks + head_pass):
        parts = (["embed"] if k == 0 else []) + (["block {}".format(k)] if k < blocks else [])
        if k == blocks - 1 + head_pass:
            parts.append("head")
        names.append(" + ".join(parts))
    return names


def _kept_tokens(job):
    """The clip's token indices (frame-major, :func:`golden.vidt.tubelets`) alive after each
    block: block ``k``'s keep list indexes the tokens that entered it."""
    ids = list(range(job.n_t * job.n_s))
    out = []
    for keep in job.blocks.keeps:
        if keep is not None:
            ids = [ids[i] for i in keep]
        out.append(list(ids))
    return out


#: What a stream of the link carries, by its path: the keep lists and position lists the host
#: sends between passes, the pixels, results (logits, STA reports) out, and the constants (every
#: other ``*_load``: weights, channel constants, LayerNorm parameters, GELU and positional tables).
def _kind(path):
    if path == "buffer.keep_load" or path.endswith("pos_load"):
        return "lists"
    if path.endswith("_load"):
        return "constants"
    return "pixels" if path == "i" else "results"


def _by_kind(payload):
    kinds = dict(constants=0, pixels=0, lists=0, results=0)
    for path, n in payload.items():
        kinds[_kind(path)] += n
    return kinds


def planned(top, job, baud):
    """The link traffic of ``job``'s clip without running it (:func:`boards.link.planned_traffic`
    over the plans of a :class:`sim.model_job.ModelJob`): payload bytes by kind, the bytes the
    host sends in whole frames, and their line time at ``baud`` (8N1: 10 bits a byte); in
    all, and per clip once the constants that stay on chip are loaded
    (:meth:`sim.model_job.ModelJob.resident_loads`: every constant when the blocks' are
    resident, all but the blocks' when they are streamed)."""
    from boards.link import planned_traffic
    from hw.link import LinkPorts
    from sim.driver import Plan
    ports = LinkPorts(top)
    inputs = {p for p, _, _ in ports.inputs}

    def count(plans):
        got = planned_traffic(ports, plans)
        sent = sum(line for path, (_, _, line) in got.items() if path in inputs)
        return _by_kind({p: b for p, (_, b, _) in got.items()}), sent
    payload, sent = count(job.plans())
    once, once_sent = count([Plan("resident", setup=job.resident_loads())])
    per_clip = {k: v - once[k] for k, v in payload.items()}
    return dict(payload=payload, bytes_out=sent, line_ms=round(1e4 * sent / baud, 3),
                per_clip=dict(payload=per_clip, bytes_out=sent - once_sent,
                              line_ms=round(1e4 * (sent - once_sent) / baud, 3)),
                streamed=job.blocks.streamed)


def traffic(link, baud, streamed):
    """What crossed the link in a run (:class:`boards.link.Link`'s counts): bytes each way,
    frames whole, the payload bytes by kind (:func:`_kind`), and the line time at ``baud``
    (8N1: 10 bits a byte, the longer direction; the commands' own frames included)."""
    line = max(link.bytes_out, link.bytes_in) * 10 / baud
    return dict(bytes_out=link.bytes_out, bytes_in=link.bytes_in,
                payload=_by_kind(link.beat_bytes), frames=link.frames, baud=baud,
                line_ms=round(1e3 * line, 3), streamed=streamed)


def _fmax(board="ulx3s"):
    """The ULX3S build's Fmax from its report (``make bitstream``), or None."""
    path = REPO / "build" / board / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return dict(board=board, design=report["design"], fmax_mhz=report["fmax_mhz"])


def picture(path, video, vcfg, kept, pass_cycles, model_cycles, pass_names, title):
    """``path`` (PNG): the clip's frames (one per token frame, its tubelet's first) with the
    tokens STA has dropped by each block hatched red, and the cycles of every pass: measured
    (the link's transfers inside) and the cycle model's compute alone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    n_t, p = vcfg.frames // vcfg.tubelet, vcfg.patch
    cols = vcfg.width // p
    n_s = (vcfg.height // p) * cols
    stages = [k for k in range(len(kept)) if k == 0 or kept[k] != kept[k - 1]]
    fig = plt.figure(figsize=(1.6 * n_t + 1, 1.7 * (len(stages) + 1) + 0.6))
    grid = fig.add_gridspec(len(stages) + 1, n_t)
    frames = video.float().numpy().transpose(1, 2, 3, 0) / 255.0       # [T, H, W, C]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    for row, k in enumerate(stages):
        alive = set(kept[k])
        for f in range(n_t):
            ax = fig.add_subplot(grid[row, f])
            ax.imshow(frames[f * vcfg.tubelet][..., :3], interpolation="nearest")
            for s in range(n_s):
                if f * n_s + s not in alive:
                    r, c = divmod(s, cols)
                    ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, facecolor="red",
                                           alpha=0.45, edgecolor="red", hatch="xx"))
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                ax.set_ylabel("after block {}\n{} tokens".format(k, len(alive)), fontsize=7)
            if row == 0:
                ax.set_title("frame {}".format(f), fontsize=7)
    ax = fig.add_subplot(grid[len(stages), :])
    ys = np.arange(len(pass_cycles))
    ax.barh(ys - 0.2, pass_cycles, height=0.4, color="tab:blue",
            label="measured, START to DONE (link transfers inside)")
    ax.barh(ys + 0.2, model_cycles, height=0.4, color="tab:orange",
            label="cycle model, compute only")
    ax.set_yticks(ys, pass_names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("cycles", fontsize=7)
    ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", default=None, help="serial port of a board (default: simulate)")
    ap.add_argument("--baud", type=int, default=3_000_000)
    ap.add_argument("--model", choices=["tiny", "bench"], default="tiny")
    ap.add_argument("--clip", type=int, default=None)
    ap.add_argument("--tau", type=int, default=None)
    ap.add_argument("--rho", type=float, default=None)
    ap.add_argument("--r", type=int, default=None)
    ap.add_argument("--max-layers", type=int, default=None,
                    help="blocks whose constants the chip holds (default: the model's array's; "
                         "fewer streams each block's before its pass)")
    ap.add_argument("--traffic", action="store_true",
                    help="only count what the clip moves over the link and the time it takes "
                         "at --baud, without running it")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "demo")
    args = ap.parse_args(argv)
    import warnings
    from amaranth.hdl import UnusedElaboratable
    # The host builds the chip's top for its port map and register windows only.
    warnings.simplefilter("ignore", UnusedElaboratable)
    from boards.build import BOARDS
    from boards.host import run_clip
    from boards.link import Link, LinkError
    from hw.model import Model
    print("demo: building the {} model's job (golden expectation) ...".format(args.model),
          flush=True)
    cfg, clip, label, settings, q, video, job = _job(args)
    plan = planned(Model(cfg), job, args.baud)
    clock = BOARDS["ulx3s"].pll_hz
    clocks = {"{:g} MHz (the ULX3S build's clock)".format(clock / 1e6): clock / 1e6,
              "{:g} MHz (its target)".format(BOARDS["ulx3s"].target_mhz):
              BOARDS["ulx3s"].target_mhz}
    if args.traffic:
        return _print_traffic(args, cfg, clip, plan, sum(job.predicted_pass_cycles()), clocks)
    t0 = time.monotonic()
    if args.port:
        try:
            link = Link.open(args.port, Model(cfg), baud=args.baud)
        except LinkError as e:
            print(BOARD_HINT.format(port=args.port) + " ({})".format(e), file=sys.stderr)
            return 2
        logits, results = run_clip(link, job, clock_hz=clock, deadline=30.0)
        link.close()
        where = "board on {}".format(args.port)
    else:
        from sim.link_sim import simulated_link
        print("demo: simulating the chip (Verilator) behind a pseudo-terminal ...", flush=True)
        with simulated_link(cfg, optimised=True, timeout=600.0) as link:
            logits, results = run_clip(link, job, clock_hz=1e5, deadline=1800.0)
        where = "simulated chip (Verilator, pseudo-terminal, UART at 4 cycles a bit)"
    wall = time.monotonic() - t0
    plans = job.plans()
    cycles = [res["counters"][plan.done[-1]]["cycles"] for plan, res in zip(plans, results)]
    want = job.logits.tolist()
    names = _pass_names(job)
    predicted = job.predicted_pass_cycles()
    work = _work(q, video, job, cfg.lanes)
    fmax = _fmax()
    if fmax:
        clocks["{fmax_mhz} MHz (Fmax of the {board} {design} build)".format(**fmax)] = \
            fmax["fmax_mhz"]
    compute = sum(predicted)
    report = dict(model=args.model, preset=cfg.name, clip=clip, label=label, **settings,
                  where=where, logits=logits, golden_logits=want, bit_exact=logits == want,
                  predicted=logits.index(max(logits)), golden_predicted=want.index(max(want)),
                  passes=[dict(name=n, cycles=c, model_cycles=pc)
                          for n, c, pc in zip(names, cycles, predicted)],
                  pass_cycles=cycles, cycles=sum(cycles), compute_cycles=compute,
                  macs=work, kept_tokens=[len(k) for k in _kept_tokens(job)],
                  milliseconds={name: round(1e3 * compute / (mhz * 1e6), 3)
                                for name, mhz in clocks.items()},
                  frames=link.frames, link=traffic(link, args.baud, job.blocks.streamed),
                  planned_link=plan,
                  wall_seconds=wall)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.json").write_text(json.dumps(report, indent=1) + "\n")
    picture(args.out / "demo.png", video, q.cfg, _kept_tokens(job), cycles, predicted, names,
            "{} clip {}: class {} (label {}), tau={} rho={} r={}".format(
                args.model, clip, report["predicted"], "n/a" if label is None else label,
                settings["tau"], settings["rho"], settings["r"]))
    print("demo: {} clip {} on the {}".format(args.model, clip, where))
    print("  class {} (golden model: {}; label: {})".format(
        report["predicted"], report["golden_predicted"], "n/a" if label is None else label))
    print("  logits {} ({})".format(logits, "bit-exact" if logits == want else
                                    "DIFFER from the golden {}".format(want)))
    print("  {} cycles over {} passes (START to DONE; the pixels and STA reports cross the "
          "link inside them); {} link frames; {:.1f} s wall".format(
              sum(cycles), len(cycles), link.frames, wall))
    for p in report["passes"]:
        print("    {:<24} {:>9} cycles (cycle model, compute only: {})".format(
            p["name"], p["cycles"], p["model_cycles"]))
    print("  MACs on the array {} of the dense model's {} ({:.2f}x fewer counting the "
          "overheads {}); tokens after each block {}".format(
              work["array"], work["dense"], work["saving"],
              {k: v for k, v in work.items() if k not in ("dense", "array", "total", "saving")},
              report["kept_tokens"]))
    for name, ms in report["milliseconds"].items():
        print("  {} compute cycles (cycle model) at {}: {:.3f} ms a clip, the link's "
              "transfers not counted".format(compute, name, ms))
    t = report["link"]
    print("  link: {} bytes to the chip, {} back in {} frames ({:.1f} ms of line at {:g} Mbaud); "
          "payload bytes {}, {}".format(
              t["bytes_out"], t["bytes_in"], t["frames"], t["line_ms"], args.baud / 1e6,
              t["payload"], _streamed_note(t["streamed"])))
    print("  wrote {} and {}".format(args.out / "demo.json", args.out / "demo.png"))
    return 0 if logits == want else 1


def _streamed_note(streamed):
    return ("every block's constants streamed before its pass" if streamed
            else "every block's constants resident (loaded once, not per clip)")


def _print_traffic(args, cfg, clip, plan, compute, clocks):
    """``--traffic``: the clip's link traffic and compute time, nothing run."""
    print("demo: {} clip {} on {} ({} rows x {} lanes, max_layers {}), not run".format(
        args.model, clip, cfg.name, cfg.rows, cfg.lanes, cfg.max_layers))
    clip_ = plan["per_clip"]
    print("  the host sends {} bytes in whole frames: {:.1f} ms of line at {:g} Mbaud (the first "
          "clip; payload bytes {})".format(plan["bytes_out"], plan["line_ms"], args.baud / 1e6,
                                           plan["payload"]))
    print("  every clip after: {} bytes, {:.1f} ms (payload bytes {}); {}".format(
        clip_["bytes_out"], clip_["line_ms"], clip_["payload"], _streamed_note(plan["streamed"])))
    for name, mhz in clocks.items():
        print("  the array computes the clip in {} cycles (cycle model): {:.3f} ms at {}"
              .format(compute, 1e3 * compute / (mhz * 1e6), name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
