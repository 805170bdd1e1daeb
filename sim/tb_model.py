"""cocotb testbench: the whole model (:class:`hw.model.Model`), a clip in, the integer model's
logits out, bit for bit, every stage's output and counters checked on the way.

Environment (set by ``tests/test_cosim_model.py`` and :mod:`sim.bench_model`):

``RTSA_MODEL``       ``tiny`` (default: the seeded :func:`sim.model_job.tiny_model`) or
                     ``bench`` (the trained benchmark model, :mod:`golden.benchmark`)
``RTSA_MODEL_SEED``  seed of the tiny model
``RTSA_CLIP``        which clip: of the tiny model's two, or of the benchmark's test split
``RTSA_TAU``, ``RTSA_RHO``, ``RTSA_R``  delta threshold, sub-vector keep ratio, STA tokens per
                     group
``RTSA_STALL``, ``RTSA_SEED``  random stalls
``RTSA_RESULTS``     optional JSON file: logits (chip and golden), classes, the clip's label,
                     and per pass its counters, ideal cycles, the beats to the host (STA
                     reports) and from it (keep lists, the projections' position lists), and
                     the constant-load beats
"""

import json
import os

import cocotb

from hw.model import Model
from sim.driver import settings_from_env
from sim.model_job import model_job, tiny_model
from sim.runner import config_from_env
from sim.streams import input_ports, run_cocotb_plan, start_clock_and_reset


def model_and_clip(environ=None):
    """``(IntVidT, uint8 clip [C, T, H, W], label or None)`` named by the environment."""
    env = os.environ if environ is None else environ
    which, clip = env.get("RTSA_MODEL", "tiny"), int(env["RTSA_CLIP"])
    if which == "tiny":
        q, videos = tiny_model(int(env["RTSA_MODEL_SEED"]))
        return q, videos[clip], None
    if which == "bench":
        from golden import benchmark
        videos, labels = benchmark.clips(1, start=clip)
        return benchmark.int_model(), videos[0], int(labels[0])
    raise ValueError("RTSA_MODEL must be 'tiny' or 'bench', not {!r}".format(which))


#: The token buffer's keep-list port: what the host sends between passes (STA selection).
KEEP_PORT = "buffer.keep_load"


def _beats(streams):
    return sum(len(beats) for _, beats in streams)


def _loaded(plan, which):
    """Beats of the plan's setup loads into the ports ``which`` accepts."""
    return sum(len(s[2]) for s in plan.setup if s[0] == "load" and which(s[1]))


@cocotb.test()
async def model_matches_golden(dut):
    cfg = config_from_env()
    env = settings_from_env()
    top = Model(cfg)
    await start_clock_and_reset(dut, idle=input_ports(top))
    q, video, label = model_and_clip()
    job = model_job(cfg, q, video, tau=int(os.environ["RTSA_TAU"]),
                    rho=float(os.environ["RTSA_RHO"]), r=int(os.environ["RTSA_R"]))
    plans = job.plans()
    # Ideal cycles per pass: its block's, the embedding's in the first, the head's in the last.
    blocks = job.blocks.blocks
    ideal = [b.ideal_cycles for b in blocks] + [0] * (len(plans) - len(blocks))
    ideal[0] += job.embed.ideal_cycles
    ideal[-1] += job.head.ideal_cycles
    predicted = job.predicted_pass_cycles()
    passes = []
    for k, plan in enumerate(plans):
        res = await run_cocotb_plan(dut, top, plan, seed=env["seed"] + 1000 * k,
                                    stall=env["stall"])
        # The pass's cycles: its first-started stage (the last one of the pipeline, see
        # ModelJob.plans) from START to DONE.
        cycles = res["counters"][plan.done[-1]]["cycles"]
        dut._log.info("%s: done, %s cycles", plan.name, cycles)
        passes.append(dict(name=plan.name, cycles=cycles, ideal_cycles=ideal[k],
                           predicted_cycles=predicted[k],
                           counters=res["counters"],
                           host_in_beats=_loaded(plan, lambda port: port == KEEP_PORT),
                           position_beats=_loaded(plan, lambda port: port.endswith(".pos_load")),
                           host_out_beats=_beats([s for s in plan.outputs if s[0] != "o"]),
                           load_beats=_loaded(plan, lambda port: port != KEEP_PORT
                                              and not port.endswith(".pos_load"))))
    logits = [v for beat in res["outputs"]["o"] for v in beat["data"]]
    want = job.logits.tolist()
    dut._log.info("logits %s (golden %s)", logits, want)
    if env["results"]:
        with open(env["results"], "w") as f:
            json.dump(dict(job=job.name, label=label, logits=logits, golden_logits=want,
                           predicted=logits.index(max(logits)),
                           golden_predicted=want.index(max(want)),
                           ideal_cycles=job.ideal_cycles, passes=passes), f, indent=1)
    assert logits == want
