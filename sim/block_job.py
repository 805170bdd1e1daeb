"""One run of a whole block (:class:`hw.block.Block`) with its golden expectation.

The expectation is built stage by stage from the golden model's pieces (LayerNorm, the delta
projection jobs of :mod:`sim.linear_job`, the attention job of :mod:`sim.attention_job`,
GELU, saturating residual adds), so every stage's own output and counters are known; for a
single sequence of a clip it is also checked against :meth:`golden.intvidt.IntBlock.forward`
under :class:`golden.sparse.SparseExecution` with the same delta threshold and sub-vector
policy: the block as the golden model runs it, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from golden import contract, qtorch
from golden.intvidt import Tokens
from golden.sparse import SparseExecution
from golden.subvector import SubvectorAttention
from hw import cycles
from hw.block import PROJECTIONS
from hw.layernorm import ln_param_words
from sim.attention_job import Sequence, attention_job
from sim.driver import Plan
from sim.linear_job import job_from_layer
from sim.predictor_job import predictor_job

__all__ = ["BlockJob", "block_job", "activation_beats"]


def activation_beats(config, x):
    """Activation beats of tokens ``x`` ``[N, d]``: ``lanes`` channels per beat."""
    V = config.lanes
    return [{"data": [int(v) for v in x[t, s:s + V]], "last": s + V == x.shape[1]}
            for t in range(x.shape[0]) for s in range(0, x.shape[1], V)]


@dataclass
class BlockJob:
    """A block run: the plan's pieces and every stage's expectation.

    Attributes
    ----------
    loads : list
        Plan steps that load the block's constants (weights, channel constants, LayerNorm
        parameters, GELU table) into its layer of every stage that holds them.
    program : list
        Plan steps that program every stage for the run (the block's layer, shapes, scalar
        constants) and start them; :attr:`setup` is ``loads + program``.
    inputs : list of (port, beats)
    expected : list of dict
        ``o`` beats (the block's RESID output).
    reports : list of (port, beats)
        The expected STA report beats (empty unless the job asked for them).
    stages : dict
        Stage name -> expected counters.
    linear, attention, predictor : the projection jobs (by name), the attention job and the
        predictor job.
    out : torch.Tensor
        The expected output ``[N, d]``.
    keys : torch.Tensor
        The block's attention keys ``[heads, N, head_dim]`` (what STA scores).
    """
    name: str
    config: object
    loads: list
    program: list
    inputs: list
    expected: list
    reports: list
    stages: dict
    linear: dict
    attention: object
    predictor: object
    out: torch.Tensor
    keys: torch.Tensor
    trace: dict = field(default_factory=dict)

    @property
    def setup(self):
        return self.loads + self.program

    @property
    def ideal_cycles(self):
        """Performed MACs of the block (four projections, predictor, attention) over the array's
        MACs per cycle."""
        return sum(self.stage_ideal_cycles().values())

    @property
    def load_beats(self):
        """Beats of every loading stream (weights, channel constants, LayerNorm parameters,
        GELU table) the setup sends: one a cycle on the hardware."""
        return sum(len(step[2]) for step in self.setup if step[0] == "load")

    @property
    def work(self):
        """The cycle model's workload (:class:`hw.cycles.BlockWork`)."""
        return cycles.BlockWork(**{p: self.linear[p].work for p in PROJECTIONS},
                                attention=self.attention.work, predict=self.predictor.busy > 0)

    @property
    def predicted_cycles(self):
        """The cycle model's ``cycles`` of this block (the last stage's counter)."""
        return cycles.block_cycles(self.config, self.work).cycles

    def stage_ideal_cycles(self):
        """Ideal cycles of every PE client: its performed MACs over the array's MACs per
        cycle."""
        return {**{p: j.ideal_cycles for p, j in self.linear.items()},
                "predict": self.predictor.ideal_cycles, "attention": self.attention.ideal_cycles}

    def plan(self, *, timeout=None, load=True):
        """The run as a :class:`sim.driver.Plan`; ``load=False`` leaves out the loads (the
        block's layer is already loaded)."""
        if timeout is None:
            timeout = int(3 * self.ideal_cycles) + 50_000
        return Plan(name=self.name, setup=self.setup if load else self.program,
                    inputs=self.inputs,
                    outputs=[("o", self.expected)] + self.reports, counters=self.stages,
                    done=list(self.stages), timeout=timeout)


def _ln_program(block, stage, ln, tokens):
    return [("pulse", stage, ("clear_error",)), ("write", stage, "layer", block),
            ("write", stage, "d", len(ln.gamma)), ("write", stage, "tokens", tokens),
            ("write", stage, "mult", ln.mult), ("write", stage, "shift", ln.shift)]


def block_job(config, blk, xs, n_s, *, tau, rho, delta_enable=True, name="block", block=0,
              tokens=None, report=False):
    """A job for the integer block ``blk`` (:class:`golden.intvidt.IntBlock`) on sequences
    ``xs`` (each ``[N, d]`` RESID, frame-major tokens of ``n_s`` positions per frame; ``N`` a
    multiple of ``n_s`` when there are several), delta threshold ``tau`` on all four
    projections and sub-vector keep ratio ``rho`` (1: dense attention), its constants in the
    stages' part ``block`` (their ``layer`` setting); ``delta_enable=False`` runs the
    projections as the dense baseline.

    ``tokens`` (:class:`golden.intvidt.Tokens` of one sequence, ``[1, N]``) gives the frame and
    spatial position of each token of a ragged set (STA pruning left it): the ``*_in`` stages
    then take the positions from a loaded list. ``report`` asks for the STA reports (keys
    summed over heads, ``sum |x|``), checked on ``sta_keys.keys`` and ``sta_act.act``."""
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs) or (len(xs) > 1 and n % n_s):
        raise ValueError("Sequences of one job need one length, a multiple of n_s when several")
    x = torch.cat(xs).to(torch.int64)
    total = x.shape[0]
    if tokens is None:
        frames_per_seq = -(-n // n_s)
        tok = torch.arange(n)
        frame = torch.cat([s * frames_per_seq + tok // n_s for s in range(len(xs))])
        spatial = (tok % n_s).repeat(len(xs))
    elif len(xs) != 1 or tokens.frame.shape != (1, n):
        raise ValueError("A listed token set is one sequence with one frame and position per "
                         "token")
    else:
        frame, spatial = tokens.frame[0], tokens.spatial[0]
    jobs = {}

    def linear(layer_name, inp):
        job = job_from_layer(config, getattr(blk, layer_name), inp, frame, spatial, n_s,
                             tau=tau, delta_enable=delta_enable,
                             name="{}/{}".format(name, layer_name), block=block)
        jobs[layer_name] = job
        return job.outputs

    a = blk.norm1(x)
    qkv = linear("qkv", a)
    heads = blk.heads
    hd = qkv.shape[1] // (3 * heads)
    seqs = [Sequence(*qkv[s * n:(s + 1) * n].reshape(n, 3, heads, hd).permute(1, 2, 0, 3))
            for s in range(len(xs))]
    # The predictor job holds the golden keep masks; attention computes with them (dense: None).
    pred = predictor_job(config, seqs, rho, name=name + "/predict")
    if rho < 1:
        seqs = [Sequence(s.q, s.k, s.v, keep) for s, keep in zip(seqs, pred.keeps)]
    att = attention_job(config, seqs, softmax_mult=blk.softmax_mult,
                        softmax_shift=blk.softmax_shift, attn_mult=blk.attn_mult,
                        attn_shift=blk.attn_shift, name=name + "/attention")
    # Attention outputs as tokens [N_total, heads * hd] (channel head * hd + dim).
    o = torch.cat([out.permute(1, 0, 2).reshape(n, -1) for out in att.outputs])
    x1 = qtorch.saturate(x + linear("proj", o), contract.RESID)
    h = linear("fc1", blk.norm2(x1))
    x2 = qtorch.saturate(x1 + linear("fc2", qtorch.gelu(h, blk.gelu)), contract.RESID)
    if len(xs) == 1:
        _check_against_intblock(blk, x, x2, n_s, tau if delta_enable else None, rho,
                                config.lanes, Tokens(frame[None], spatial[None]))

    # Loads: the constants of the block's layer (block) in every stage that holds them. The
    # layer setting goes first: reset_load restarts the load address of its part.
    beats = {**{(ln, "p_load"): ln_param_words(config, norm.gamma.tolist(), norm.beta.tolist())
                for ln, norm in (("ln1", blk.norm1), ("ln2", blk.norm2))},
             **{(p, port): getattr(jobs[p], what) for p in PROJECTIONS
                for port, what in (("w_load", "weights"), ("c_load", "channels"))},
             ("gelu", "t_load"): [{"data": v} for v in blk.gelu]}
    loads = []
    for stage in dict.fromkeys(stage for stage, _ in beats):
        loads += [("write", stage, "layer", block), ("pulse", stage, ("reset_load",))]
        loads += [("load", stage + "." + port, b) for (st, port), b in beats.items()
                  if st == stage]
    program = [("pulse", "frame", ("clear_error",)), ("write", "frame", "d", x.shape[1]),
               ("write", "frame", "tokens", total)]
    program += _ln_program(block, "ln1", blk.norm1, total) + _ln_program(block, "ln2", blk.norm2,
                                                                          total)
    listed = tokens is not None
    for p in PROJECTIONS:
        program += jobs[p].setup(p, load=False) + [("write", p + "_in", "positions", n_s),
                                                   ("write", p + "_in", "tokens", total),
                                                   ("write", p + "_in", "listed", int(listed))]
        if listed:
            program += [("pulse", p + "_in", ("reset_load",)),
                        ("load", p + "_in.pos_load", [{"position": int(v)} for v in spatial])]
    program += [("write", "sta_keys", "tokens", total), ("write", "sta_keys", "heads", heads),
                ("write", "sta_keys", "head_dim", hd), ("write", "sta_keys", "report", int(report)),
                ("write", "sta_act", "tokens", total), ("write", "sta_act", "report", int(report))]
    program += [("write", "predict", r, v) for r, v in pred.registers]
    program += [("write", "attention", r, v) for r, v in att.registers]
    program += [("write", "transpose", "tokens", n), ("write", "transpose", "heads", heads),
                ("write", "transpose", "sequences", len(xs))]
    program += [("write", "gelu", "layer", block), ("write", "gelu", "tokens", total)]
    program += [("write", r, "tokens", total) for r in ("res1", "res2")]
    # The STA reports: K summed over heads, sum |x| of the block's output (golden.sta's inputs).
    keys = qkv[:, heads * hd:2 * heads * hd].reshape(total, heads, hd)
    key_sum = keys.sum(1)
    act = x2.abs().sum(1)
    outputs = [("o", activation_beats(config, x2))]
    if report:
        outputs += [("sta_keys.keys", activation_beats(config, key_sum)),
                    ("sta_act.act", [{"sum": int(a)} for a in act])]
    stages = _expected_counters(jobs, pred, att, total)
    reported = {"sta_keys": total * hd // config.lanes, "sta_act": total}
    for s_ in ("sta_keys", "sta_act"):
        stages[s_]["reported"] = reported[s_] if report else 0
    # Last stage first: its cycles then span the whole run (the output stage's START to DONE,
    # every other START included), the block's cycle count.
    program += [("start", s, True) for s in reversed(list(stages))]
    return BlockJob(name=name, config=config, loads=loads, program=program,
                    inputs=[("i", activation_beats(config, x))],
                    expected=outputs[0][1], reports=outputs[1:], stages=stages, linear=jobs,
                    attention=att, predictor=pred, out=x2,
                    keys=keys.permute(1, 0, 2))


def _expected_counters(jobs, pred, att, total):
    stages = {s: {"tokens_out": total} for s in ("frame", "ln1", "ln2")}
    for p in PROJECTIONS:
        stages[p + "_in"] = {"tokens_out": total}
        stages[p] = {k: v for k, v in jobs[p].counters().items() if k != "pairs"}
    stages["predict"] = pred.counters()
    stages["attention"] = att.counters()
    stages["transpose"] = {"tokens_out": total}
    for s in ("gelu", "res1", "res2", "sta_keys", "sta_act"):
        stages[s] = {"tokens_out": total}
    # Every stage's cycles are read too (each counts from its START to its DONE).
    return {s: {"cycles": None, **c} for s, c in stages.items()}


def _check_against_intblock(blk, x, want, n_s, tau, rho, lanes, tokens):
    """The stage-by-stage expectation is the golden block's own output."""
    run = SparseExecution(n_s, tau=tau,
                          attention=SubvectorAttention(lanes, rho) if rho < 1 else None)
    got, _ = blk.forward(x[None], run, 0, tokens)
    if not torch.equal(got[0], want):
        raise AssertionError("Stage-by-stage block expectation differs from IntBlock.forward "
                             "in {} values".format(int((got[0] != want).sum())))
