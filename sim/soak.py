"""``make soak``: randomised co-simulation campaigns of every engine and the run-through.

Four campaigns run the generated Verilog under Verilator, each on one simulator build and one
simulator invocation that loops over seeded random jobs (:mod:`sim.tb_soak`):

* ``linear_delta``: the linear engine (:class:`hw.run_through.LinearTop`) with delta skipping:
  random layer shapes within the engine's limits, int8 or int16 outputs, thresholds, token
  frames that change little or much, positions per frame;
* ``linear_dense``: the same engine with delta skipping disabled (every element sent);
* ``attention``: the attention engine (:class:`hw.run_through.AttentionTop`): random heads,
  tokens (partial query blocks), sequences per run, sub-vector masks from empty to dense,
  softmax and output scales;
* ``run_through``: the QKV projection feeding attention on one array
  (:class:`hw.run_through.RunThrough`): random QKV layers, sequences, thresholds, keep ratios.

Every job draws its data, shape, sparsity and back-pressure from its own seed: stall
probabilities of the input and of the output streams (independently, from :data:`STALLS`) and
the longest stall (:data:`MAX_WAITS`). Each job is checked like every co-simulation
(:class:`sim.driver.Plan`: outputs, DONE without error, the exact counters); every output
element (one integer of an output beat's ``data``) is compared bit-exactly with the golden
model and counted. A mismatch prints the seed and the first differing element and makes the
command exit non-zero; a job that hangs is stopped by the drivers' idle timeouts and by a
bound on its simulated time (:func:`job_bound_cycles`).

Output: ``<out>/soak.json`` (per campaign: jobs, seeds, outputs, beats, mismatches, stall
probabilities, wall seconds, simulator), ``<out>/soak.md`` and, per campaign,
``<out>/<campaign>.jsonl`` (one line per job: seed, shape, stalls, outputs, cycles, result).

    python -m sim.soak --out build/soak [--outputs 1000000] [--seed 1] [--campaign NAME]
    python -m sim.soak --campaign attention --job-seed 3000017     # replay one job

The seeds of campaign ``c`` (its index in :data:`CAMPAIGNS`) under ``--seed S`` are
``S * 10**7 + (c + 1) * 10**6 + k`` for job ``k``, so ``--job-seed`` replays any job.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from golden import contract
from hw.config import preset
from sim.runner import REPO, SIMULATORS, run_cocotb, write_report
from sim.scoreboard import count_values, first_difference
from sim.stimulus import random_layer, random_sequence, random_tokens

__all__ = ["CONFIG", "CAMPAIGNS", "STALLS", "MAX_WAITS", "SoakJob", "soak_job", "job_seeds",
           "check_job", "run_campaign", "main"]

#: The soak's configuration: small, so that each of the three optimised Verilator builds takes
#: a minute or two (on 2 busy cores) and a job thousands of cycles, yet every dimension is more
#: than one: 2 rows x 4 lanes, 2 requantisers shared by a row's 4 results, the iCE40's 3-step
#: requantiser, 2 heads of head_dim 16, 40 tokens (10 query blocks), 16 positions per frame,
#: layers up to 128 wide (mlp_ratio 4: the run-through's QKV projection has 3 d = 96 outputs);
#: the weight buffer holds 512 words per row (the QKV projection of d = 32 needs 12 chunks x 32).
CONFIG = preset("tiny").replace(lanes=4, rows=2, requant_lanes=2, decode_width=2, bitmap_word=8,
                                max_d=32, mlp_ratio=4, max_tokens=40, max_heads=2,
                                weight_depth=1024, max_positions=16, name="soak")
#: Stall probabilities a job draws for its input streams and for its output stream.
STALLS = (0.0, 0.05, 0.2, 0.5, 0.8)
#: The longest stall (cycles) a job draws.
MAX_WAITS = (1, 2, 3, 6)
#: Seconds between progress lines.
PROGRESS_S = 15.0


@dataclass
class SoakJob:
    """One seeded job of a campaign: the :class:`sim.driver.Plan`, its stalls, its bound."""
    seed: int
    campaign: str
    shape: dict
    plan: object
    stall: tuple
    max_wait: int
    predicted_cycles: float

    @property
    def outputs(self):
        """Output elements the job checks."""
        return sum(count_values(want) for _, want in self.plan.outputs)

    @property
    def beats(self):
        return sum(len(want) for _, want in self.plan.outputs)

    def bound_cycles(self):
        """A bound on the job's simulated cycles (its watchdog): every cycle of the cycle
        model's prediction stalled up to ``max_wait`` cycles on every side, and a margin."""
        return int(4 * (self.max_wait + 1) * self.predicted_cycles) + 100_000


def _scale(rng, lo, hi):
    """A requantisation ``(mult, shift)`` of a scale drawn log-uniformly in ``[lo, hi]``."""
    return contract.quantize_multiplier(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _attention_constants(rng):
    softmax_mult, softmax_shift = _scale(rng, 0.005, 0.2)
    attn_mult, attn_shift = _scale(rng, 1 / 1200, 1 / 120)
    return dict(softmax_mult=softmax_mult, softmax_shift=softmax_shift, attn_mult=attn_mult,
                attn_shift=attn_shift)


def _frames(rng, cfg, tokens_max):
    """Positions per frame and frames: ``n_s`` in ``1..max_positions``, at most
    ``tokens_max`` tokens."""
    n_s = rng.randint(1, cfg.max_positions)
    return n_s, rng.randint(1, max(1, tokens_max // n_s))


def _linear(cfg, rng, delta):
    from hw.linear_engine import engine_limits
    from sim.linear_job import job_from_layer
    E, V, RV = cfg.bitmap_word, cfg.lanes, cfg.macs_per_cycle
    max_in, max_out, w_depth = engine_limits(cfg)
    d_in = E * rng.randint(1, max_in // E)
    outs = [d for d in range(V, max_out + 1, V) if -(-d // RV) * d_in <= w_depth]
    d_out = rng.choice(outs)
    wide = rng.random() < 0.3
    # A reduction of d_in int8 products: shifts about log2(sqrt(d_in)) apart, some saturating.
    base = 21 + round(math.log2(d_in) / 2) - (8 if wide else 0)
    layer = random_layer(rng, d_out, d_in, contract.RESID if wide else contract.ACT,
                         shifts=(base - 2, base + 3))
    n_s, n_t = _frames(rng, cfg, 96)
    change = rng.choice((0.0, 0.05, 0.3, 1.0))
    tau = rng.choice((0, 1, 2, 4, 8, 16)) if delta else 0
    x, frame, spatial = random_tokens(rng, n_t, n_s, d_in, change=change)
    job = job_from_layer(cfg, layer, x, frame, spatial, n_s, tau=tau, delta_enable=delta,
                         name="linear")
    shape = dict(d_in=d_in, d_out=d_out, wide=wide, n_s=n_s, frames=n_t, tau=tau,
                 change=change, sent=job.pairs // -(-d_out // RV))
    return job.plan("linear"), job.predicted_cycles, shape


def _attention(cfg, rng):
    from sim.attention_job import attention_job
    heads = rng.randint(1, cfg.max_heads)
    n = rng.randint(1, cfg.max_tokens)
    sequences = rng.choice((1, 1, 2, 3))
    density = rng.choice((None, 0.05, 0.2, 0.5, 0.9, rng.random()))
    blocks = -(-n // cfg.lanes)
    empty = {(h, b) for h in range(heads) for b in range(blocks) if rng.random() < 0.1}
    seqs = [random_sequence(rng, cfg, heads, n, density=density,
                            empty_blocks=() if density is None else empty)
            for _ in range(sequences)]
    job = attention_job(cfg, seqs, **_attention_constants(rng), name="attention")
    shape = dict(heads=heads, tokens=n, sequences=sequences, density=density,
                 empty_blocks=len(empty) if density is not None else 0,
                 kept_subvectors=job.subvectors)
    return job.plan("attention"), job.predicted_cycles, shape


def _run_through(cfg, rng):
    from sim.run_through_job import run_through_job
    heads = rng.randint(1, cfg.max_heads)
    d = heads * cfg.head_dim
    base = 21 + round(math.log2(d) / 2)
    layer = random_layer(rng, 3 * d, d, shifts=(base - 2, base + 2))
    n_s, n_t = _frames(rng, cfg, cfg.max_tokens)
    n = rng.randint(max(1, (n_t - 1) * n_s + 1), n_t * n_s)   # the last frame partial
    sequences = rng.choice((1, 2, 3))
    change = rng.choice((0.05, 0.3, 1.0))
    xs = [random_tokens(rng, n_t, n_s, d, change=change)[0][:n] for _ in range(sequences)]
    tau = rng.choice((0, 1, 2, 4, 8))
    rho = rng.choice((0.25, 0.5, 0.75, 1.0))
    job = run_through_job(cfg, layer, xs, n_s, tau=tau, rho=rho, heads=heads,
                          **_attention_constants(rng), name="run_through")
    shape = dict(heads=heads, d=d, tokens=n, n_s=n_s, sequences=sequences, tau=tau, rho=rho,
                 change=change)
    return job.plan(), job.predicted_cycles, shape


@dataclass(frozen=True)
class Campaign:
    name: str
    design: str
    make: object            # (config, rng) -> (plan, predicted cycles, shape)
    doc: str


CAMPAIGNS = {c.name: c for c in (
    Campaign("linear_delta", "linear_engine", lambda cfg, rng: _linear(cfg, rng, True),
             "linear engine, delta mode"),
    Campaign("linear_dense", "linear_engine", lambda cfg, rng: _linear(cfg, rng, False),
             "linear engine, dense mode"),
    Campaign("attention", "attention_engine", _attention, "attention engine"),
    Campaign("run_through", "run_through", _run_through, "QKV projection -> attention"),
)}


def job_seeds(seed, campaign):
    """The first job seed of ``campaign`` under the soak seed ``seed`` (job ``k``: + ``k``)."""
    return seed * 10 ** 7 + (list(CAMPAIGNS).index(campaign) + 1) * 10 ** 6


def soak_job(cfg, campaign, seed):
    """The job of ``campaign`` drawn from ``seed``."""
    rng = random.Random(seed)
    plan, predicted, shape = CAMPAIGNS[campaign].make(cfg, rng)
    plan.name = "{}/{}".format(campaign, seed)
    stall = (rng.choice(STALLS), rng.choice(STALLS))
    return SoakJob(seed=seed, campaign=campaign, shape=shape, plan=plan, stall=stall,
                   max_wait=rng.choice(MAX_WAITS), predicted_cycles=predicted)


def corrupt(job):
    """Change one output element of ``job``'s expectation (drawn from its seed): a soak run
    of the corrupted job must report a mismatch."""
    rng = random.Random(-job.seed)
    _, want = job.plan.outputs[0]
    beat = want[rng.randrange(len(want))]
    lane = rng.randrange(len(beat["data"]))
    value = beat["data"][lane]
    beat["data"][lane] = value + 1 if value < 127 else value - 1
    return job


def check_job(job, top, result):
    """``None`` if ``result`` (of :class:`sim.driver.JobDriver`) is what ``job`` expects, else
    the first difference: ``{"port", "transaction", "field", "got", "want", "got_beat",
    "want_beat"}`` for an output,
    ``{"message"}`` for a status or counter."""
    for port, want in job.plan.outputs:
        got = result["outputs"].get(port, [])
        diff = first_difference(got, want)
        if diff is not None:
            n = diff["transaction"]
            return dict(port=port, **diff, got_beat=got[n] if n < len(got) else None,
                        want_beat=want[n] if n < len(want) else None)
    try:
        job.plan.check(top, result, job.seed)
    except AssertionError as e:
        return {"message": str(e)}
    return None


def _read_records(path):
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # The testbench appends whole lines; a line being written is not yet complete.
    return [json.loads(line) for line in lines if line.endswith("}")]


def describe(record):
    """A mismatch or error of one job record as one line."""
    m = record.get("mismatch") or {}
    if "field" in m:
        what = "{} beat #{} {}: got {}, want {}".format(m["port"], m["transaction"], m["field"],
                                                        m["got"], m["want"])
    else:
        what = m.get("message") or record.get("error")
    return "MISMATCH {} seed {}: {} (replay: python -m sim.soak --campaign {} --job-seed {})" \
        .format(record["campaign"], record["seed"], what, record["campaign"], record["seed"])


def run_campaign(name, target, first_seed, out, *, cfg=CONFIG, simulator="verilator",
                 optimised=True, max_jobs=0, corrupt_seed=None, totals=None):
    """Run campaign ``name`` until ``target`` outputs are checked (or ``max_jobs`` jobs),
    printing progress; its report entry."""
    campaign = CAMPAIGNS[name]
    results = Path(out).resolve() / (name + ".jsonl")      # the simulator runs elsewhere
    results.parent.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    env = {"RTSA_SOAK_CAMPAIGN": name, "RTSA_SOAK_FIRST": str(first_seed),
           "RTSA_SOAK_OUTPUTS": str(target), "RTSA_SOAK_JOBS": str(max_jobs),
           "RTSA_SOAK_CORRUPT": "" if corrupt_seed is None else str(corrupt_seed),
           "RTSA_RESULTS": str(results)}
    failure = []

    def simulate():
        try:
            run_cocotb(campaign.design, cfg, simulator, "sim.tb_soak", seed=first_seed,
                       env=env, optimised=optimised)
        except Exception as e:          # noqa: BLE001 (reported, and the soak fails)
            failure.append("{}: {}".format(type(e).__name__, e))

    print("soak: {} ({}, {} under {}): {} outputs from seed {} ...".format(
        name, campaign.doc, campaign.design, simulator, target, first_seed), flush=True)
    t0 = time.time()
    thread = threading.Thread(target=simulate)
    thread.start()
    shown, reported, last, last_done, first_result = 0, 0, t0, 0, None
    while thread.is_alive() or shown < len(_read_records(results)):
        thread.join(timeout=1.0)
        records = _read_records(results)
        if records and first_result is None:
            first_result = time.time() - t0      # the build and the simulator's start
        for r in records[reported:]:
            if r.get("mismatch") or r.get("error"):
                print(describe(r), flush=True)
        reported = len(records)
        now = time.time()
        if records and len(records) > shown and (now - last >= PROGRESS_S
                                                 or not thread.is_alive()):
            done = sum(r["outputs"] for r in records)
            total = "" if totals is None else ", all campaigns {} / {}".format(
                totals[0] + done, totals[1])
            # The rate of this batch of jobs (the first batch's time is the build's).
            rate = ("{:.0f} outputs/s".format((done - last_done) / max(1e-9, now - last))
                    if shown else "build and start {:.0f} s".format(first_result))
            print("soak: {} {:>7} / {} outputs{} ({} jobs, seeds {}..{}, {})".format(
                name, done, target, total, len(records), records[shown]["seed"],
                records[-1]["seed"], rate), flush=True)
            shown, last, last_done = len(records), now, done
    wall = time.time() - t0
    records = _read_records(results)
    bad = [r for r in records if r.get("mismatch") or r.get("error")]
    outputs = sum(r["outputs"] for r in records)
    if failure and not bad:
        print("soak: {} FAILED: {}".format(name, failure[0]), flush=True)
    return {
        "campaign": name, "design": campaign.design, "description": campaign.doc,
        "simulator": simulator, "optimised_build": optimised, "preset": cfg.name,
        "jobs": len(records), "first_seed": first_seed,
        "seeds": [r["seed"] for r in records],
        "target_outputs": target, "outputs": outputs,
        "beats": sum(r["beats"] for r in records),
        "cycles": sum(r.get("cycles") or 0 for r in records),
        "mismatches": len(bad), "mismatch_details": [describe(r) for r in bad],
        "failure": failure[0] if failure else None,
        "stall_probabilities": {
            "inputs": sorted({r["stall"][0] for r in records}),
            "outputs": sorted({r["stall"][1] for r in records}),
            "max_wait": sorted({r["max_wait"] for r in records}),
            "jobs_by_input_output": _histogram(records)},
        "wall_s": round(wall, 1),
        "build_and_start_s": None if first_result is None else round(first_result, 1),
        "outputs_per_s": round(outputs / max(1e-9, wall - (first_result or 0)), 1),
        "results": str(results.relative_to(REPO) if results.is_relative_to(REPO) else results),
    }


def _histogram(records):
    counts = {}
    for r in records:
        key = "{:g}/{:g}".format(*r["stall"])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def markdown(meta, rows):
    lines = [
        "# Soak: randomised co-simulation campaigns",
        "",
        "Preset `{preset}` ({rows} rows x {lanes} lanes), {simulator}, soak seed {seed}; every "
        "output element compared bit-exactly with the golden model, random stalls on every "
        "stream (input / output probabilities drawn per job from {stalls}, stalls of up to "
        "{waits} cycles).".format(stalls=", ".join(map("{:g}".format, STALLS)),
                                  waits=max(MAX_WAITS), **meta),
        "",
        "| campaign | design | jobs | seeds | outputs | beats | cycles | mismatches | wall s "
        "| outputs/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        seeds = "{}..{}".format(r["seeds"][0], r["seeds"][-1]) if r["seeds"] else "-"
        lines.append("| {campaign} | {design} | {jobs} | {0} | {outputs} | {beats} | {cycles} "
                     "| {mismatches} | {wall_s:.0f} | {outputs_per_s:.0f} |".format(seeds, **r))
    total = {k: sum(r[k] for r in rows) for k in ("jobs", "outputs", "beats", "cycles",
                                                   "mismatches")}
    lines += ["| all | | {jobs} | | {outputs} | {beats} | {cycles} | {mismatches} | {0:.0f} | |"
              .format(meta["wall_s"], **total), ""]
    for r in rows:
        for d in r["mismatch_details"]:
            lines.append("- " + d)
        if r["failure"] and not r["mismatch_details"]:
            lines.append("- {} failed: {}".format(r["campaign"], r["failure"]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "soak")
    ap.add_argument("--outputs", type=int, default=1_000_000,
                    help="checked output elements in all (shared equally by the campaigns)")
    ap.add_argument("--seed", type=int, default=1, help="soak seed (every job's seed derives "
                    "from it)")
    ap.add_argument("--campaign", action="append", choices=list(CAMPAIGNS),
                    help="run only this campaign (repeatable)")
    ap.add_argument("--job-seed", type=int, help="replay one job (with one --campaign)")
    ap.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    ap.add_argument("--no-optimise", dest="optimised", action="store_false",
                    help="an -O0 simulator build (faster to build, slower to run)")
    ap.add_argument("--corrupt-seed", type=int,
                    help="self-check: corrupt this job's expectation (the soak must fail)")
    args = ap.parse_args(argv)
    names = args.campaign or list(CAMPAIGNS)
    if args.job_seed is not None and len(names) != 1:
        ap.error("--job-seed replays one job of one --campaign")
    t0 = time.time()
    share = -(-args.outputs // len(names))
    rows, done = [], 0
    for name in names:
        first = args.job_seed if args.job_seed is not None else job_seeds(args.seed, name)
        row = run_campaign(name, share, first, args.out, simulator=args.simulator,
                           optimised=args.optimised, max_jobs=int(args.job_seed is not None),
                           corrupt_seed=args.corrupt_seed, totals=(done, share * len(names)))
        done += row["outputs"]
        rows.append(row)
    meta = {"preset": CONFIG.name, "rows": CONFIG.rows, "lanes": CONFIG.lanes,
            "simulator": args.simulator, "seed": args.seed, "wall_s": time.time() - t0}
    target = 1 if args.job_seed is not None else args.outputs
    ok = (all(r["mismatches"] == 0 and r["failure"] is None for r in rows)
          and sum(r["outputs"] for r in rows) >= target)
    payload = {"seed": args.seed, "target_outputs": args.outputs, "simulator": args.simulator,
               "config": CONFIG.summary(), "stalls": list(STALLS), "max_waits": list(MAX_WAITS),
               "outputs": sum(r["outputs"] for r in rows),
               "beats": sum(r["beats"] for r in rows), "jobs": sum(r["jobs"] for r in rows),
               "mismatches": sum(r["mismatches"] for r in rows), "ok": ok,
               "wall_s": round(meta["wall_s"], 1), "campaigns": rows}
    write_report(args.out, "soak", payload, markdown(meta, rows), t0)
    print("soak: {} ({} outputs checked, {} mismatches)".format(
        "PASSED" if ok else "FAILED", payload["outputs"], payload["mismatches"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
