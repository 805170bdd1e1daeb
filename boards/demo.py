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
the label, cycles per pass, frames and wall time) and prints a summary; exits non-zero when the
chip's logits differ from the golden model's.
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
    from sim.model_job import TINY_RTSA, model_job, tiny_model
    if args.model == "tiny":
        q, videos = tiny_model(7301)
        clip = 1 if args.clip is None else args.clip
        video, label, cfg = videos[clip], None, TINY_RTSA
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
    return cfg, clip, label, settings, model_job(cfg, q, video, **settings)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", default=None, help="serial port of a board (default: simulate)")
    ap.add_argument("--baud", type=int, default=3_000_000)
    ap.add_argument("--model", choices=["tiny", "bench"], default="tiny")
    ap.add_argument("--clip", type=int, default=None)
    ap.add_argument("--tau", type=int, default=None)
    ap.add_argument("--rho", type=float, default=None)
    ap.add_argument("--r", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "demo")
    args = ap.parse_args(argv)
    import warnings
    from amaranth.hdl import UnusedElaboratable
    # The host builds the chip's top for its port map and register windows only.
    warnings.simplefilter("ignore", UnusedElaboratable)
    from boards.host import run_clip
    from boards.link import Link, LinkError
    print("demo: building the {} model's job (golden expectation) ...".format(args.model),
          flush=True)
    cfg, clip, label, settings, job = _job(args)
    t0 = time.monotonic()
    if args.port:
        from hw.model import Model
        try:
            link = Link.open(args.port, Model(cfg), baud=args.baud)
        except LinkError as e:
            print(BOARD_HINT.format(port=args.port) + " ({})".format(e), file=sys.stderr)
            return 2
        logits, results = run_clip(link, job, clock_hz=25e6, deadline=30.0)
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
    report = dict(model=args.model, preset=cfg.name, clip=clip, label=label, **settings,
                  where=where, logits=logits, golden_logits=want,
                  predicted=logits.index(max(logits)), golden_predicted=want.index(max(want)),
                  pass_cycles=cycles, cycles=sum(cycles), frames=link.frames, wall_seconds=wall)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.json").write_text(json.dumps(report, indent=1) + "\n")
    print("demo: {} clip {} on the {}".format(args.model, clip, where))
    print("  class {} (golden model: {}; label: {})".format(
        report["predicted"], report["golden_predicted"], "n/a" if label is None else label))
    print("  logits {} ({})".format(logits, "bit-exact" if logits == want else
                                    "DIFFER from the golden {}".format(want)))
    print("  {} cycles over {} passes {} (START to DONE; the pixels and STA reports cross the "
          "link inside them); {} link frames; {:.1f} s wall".format(
              sum(cycles), len(cycles), cycles, link.frames, wall))
    print("  wrote {}".format(args.out / "demo.json"))
    return 0 if logits == want else 1


if __name__ == "__main__":
    sys.exit(main())
