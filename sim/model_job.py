"""Several transformer blocks of a model on one :class:`hw.block.Block`, their constants all
on chip, with the golden expectation.

Every stage that holds constants keeps ``max_layers`` parts (:data:`hw.engine.LAYER`). When
the model's blocks fit (``depth <= max_layers``, *resident*), a run loads every block's
weights, channel constants, LayerNorm parameters and GELU table once, then runs the blocks one
after the other; otherwise (*streamed*: a board whose block RAM holds fewer blocks' weights
than the model has) each pass first loads its own block's constants, into part
``block % max_layers``, so the host sends every block's constants once a clip. Before each
block the host writes the block's ``layer`` and its scalar settings (token counts, LayerNorm
and attention requantisation constants, a few words per stage) and starts the stages; the
block's input is the previous block's output.
Between blocks the pipeline drains (the next block starts when the last stage of the previous
one is DONE): those cycles are in each block's count.

STA pruning (``r > 0``): a stage block reports each token's keys summed over heads and its
``sum |x|`` (:mod:`hw.sta_report`; the job checks both streams); the host selects the tokens
with :class:`golden.sta.STAPruner` (the metric from the head sums is bit-identical to the
metric from the keys, :func:`golden.sta.key_metric_from_sum`) and sends the next block only
the kept tokens, with their spatial positions as the projections' position lists (the ragged
token set; each delta reference stays with its position).

On :class:`hw.block.Block` alone the host feeds block ``l + 1`` with block ``l``'s output,
pruned; the whole model (:class:`ModelJob`, :class:`hw.model.Model`) keeps it on chip in its
token buffer and the host sends only the keep list (:attr:`BlocksJob.keeps`).

The expectation of each block is :func:`sim.block_job.block_job`'s (itself checked against
:meth:`golden.intvidt.IntBlock.forward`); for a single sequence the chain is also checked
against the blocks of the integer model run back to back under one
:class:`golden.sparse.SparseExecution`, the way :meth:`golden.intvidt.IntVidT.forward` runs
them (without pruning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from golden.intvidt import Tokens
from golden.sparse import SparseExecution
from golden.sta import STAPruner
from golden.subvector import SubvectorAttention
from hw import cycles
from hw.layernorm import ln_param_words
from sim.block_job import activation_beats, block_job

__all__ = ["BlocksJob", "blocks_job", "keep_list", "ModelJob", "model_job", "TINY",
           "TINY_RTSA", "TINY_STREAMED", "tiny_model"]


@dataclass
class BlocksJob:
    """Blocks run back to back on one :class:`hw.block.Block`.

    Attributes
    ----------
    blocks : list of :class:`sim.block_job.BlockJob`
        One per block, in order; block ``l`` holds its constants in layer
        ``l % config.max_layers``.
    out : torch.Tensor
        The last block's expected output ``[N_total, d]`` (pruned, if its block is a stage
        block: what the head pools).
    keeps : list
        Per block, the STA keep list applied to its output (the indices of the tokens that go
        on, ascending), or None where no stage is due (every token goes on).
    """
    name: str
    config: object
    blocks: list
    out: torch.Tensor
    keeps: list

    @property
    def ideal_cycles(self):
        return sum(b.ideal_cycles for b in self.blocks)

    @property
    def load_beats(self):
        return sum(b.load_beats for b in self.blocks)

    @property
    def streamed(self):
        """More blocks than the stages hold layers of: each block's constants are loaded
        before its own pass, not all before the first."""
        return len(self.blocks) > self.config.max_layers

    def plans(self, *, timeout=None):
        """One :class:`sim.driver.Plan` per block: resident, the first loads every block's
        constants before it programs and starts its own run, the others only program and
        start; streamed, each loads its own block's constants first."""
        if self.streamed:
            return [b.plan(timeout=timeout) for b in self.blocks]
        plans = [b.plan(timeout=timeout, load=False) for b in self.blocks]
        plans[0].setup = [step for b in self.blocks for step in b.loads] + plans[0].setup
        return plans


def blocks_job(config, model, xs, n_s, *, tau, rho, r=0, depth=None, delta_enable=True,
               name="blocks"):
    """A job for blocks ``0 .. depth - 1`` (default: all) of the integer model ``model``
    (:class:`golden.intvidt.IntVidT`) on sequences ``xs`` (the RESID tokens entering block 0,
    each ``[N, d]``; see :func:`sim.block_job.block_job` for the token order), delta threshold
    ``tau``, sub-vector keep ratio ``rho`` and STA pruning of ``r`` tokens per group (one
    whole clip: ``N = n_t * n_s``; the stages follow :class:`golden.sta.STAPruner`'s schedule
    for ``depth`` blocks). Block ``b``'s constants go to layer ``b % config.max_layers``
    (streamed when ``depth > max_layers``: :attr:`BlocksJob.streamed`)."""
    depth = len(model.blocks) if depth is None else depth
    if not 1 <= depth <= len(model.blocks):
        raise ValueError("depth must be 1 .. {} (the model's blocks), not {!r}"
                         .format(len(model.blocks), depth))
    n = xs[0].shape[0]
    pruner = _pruner(xs, n_s, r, depth)
    tokens = Tokens.full(1, n // n_s, n_s) if pruner else None
    jobs, keeps, seqs, ragged = [], [], list(xs), False
    for b in range(depth):
        stage = pruner is not None and b in pruner.blocks
        job = block_job(config, model.blocks[b], seqs, n_s, tau=tau, rho=rho,
                        delta_enable=delta_enable, name="{}/block{}".format(name, b),
                        block=b % config.max_layers,
                        tokens=tokens if ragged else None, report=stage)
        jobs.append(job)
        if stage:
            # The host's selection (from what the chip reported, which the job checks).
            before = tokens
            x, tokens = pruner.prune(b, job.out[None], job.keys[None], tokens)
            seqs, ragged = [x[0]], True
            keeps.append(keep_list(before, tokens, n_s))
        else:
            seqs = list(job.out.split(seqs[0].shape[0]))
            keeps.append(None)
    out = seqs[0] if pruner else jobs[-1].out
    if len(xs) == 1:
        _check_against_model(model, xs[0], out, n_s, depth, tau if delta_enable else None,
                             rho, r, config.lanes)
    return BlocksJob(name=name, config=config, blocks=jobs, out=out, keeps=keeps)


def keep_list(before, after, n_s):
    """The indices among the tokens ``before`` (:class:`golden.intvidt.Tokens`, one clip) of
    the tokens ``after`` that STA kept, in ``after``'s order: what the host loads into the
    token buffer (:class:`hw.token_buffer.TokenBuffer`), which takes them only ascending."""
    where = {int(t): k for k, t in enumerate(before.frame[0] * n_s + before.spatial[0])}
    keep = [where[int(t)] for t in after.frame[0] * n_s + after.spatial[0]]
    if keep != sorted(set(keep)):
        raise AssertionError("STA kept tokens out of order: {}".format(keep))
    return keep


def _pruner(xs, n_s, r, depth):
    if not r:
        return None
    if len(xs) != 1 or xs[0].shape[0] % n_s:
        raise ValueError("STA pruning runs on one whole clip (a multiple of n_s tokens)")
    return STAPruner(xs[0].shape[0] // n_s, n_s, r, depth)


def _check_against_model(model, x, want, n_s, depth, tau, rho, r, lanes):
    """The chained expectation is the integer model's blocks run back to back, pruned the
    way :meth:`golden.intvidt.IntVidT.forward` prunes."""
    n = x.shape[0]
    run = SparseExecution(n_s, tau=tau,
                          attention=SubvectorAttention(lanes, rho) if rho < 1 else None,
                          pruner=_pruner([x], n_s, r, depth))
    full = Tokens.full(1, -(-n // n_s), n_s)
    tokens = Tokens(full.frame[:, :n], full.spatial[:, :n])
    got = x[None].to(torch.int64)
    for b in range(depth):
        got, k = model.blocks[b].forward(got, run, b, tokens)
        got, tokens = run.prune(b, got, k, tokens)
    if not torch.equal(got[0], want):
        raise AssertionError("Chained block expectation differs from the model's blocks in {} "
                             "values".format(int((got[0] != want).sum())))


@dataclass
class ModelJob:
    """A whole clip on :class:`hw.model.Model`: embedding, every block, the head.

    Attributes
    ----------
    blocks : :class:`BlocksJob`
        The blocks (block 0's input is the embedded clip).
    embed, head : :class:`sim.linear_job.LinearJob`
        The embedding (dense, wide) and the classifier (logits).
    logits : torch.Tensor
        The expected logits ``[classes]``: :meth:`golden.intvidt.IntVidT.forward`'s.
    """
    name: str
    config: object
    blocks: BlocksJob
    embed: object
    head: object
    pos: list
    norm: object
    pooled_tokens: int
    pixels: list
    logits: torch.Tensor
    n_s: int
    #: STA's parameters (what the host's selection needs): tokens per group removed, token
    #: frames, the model's heads and head width.
    r: int = 0
    n_t: int = 0
    heads: int = 0
    head_dim: int = 0
    #: The golden model's run of the clip (:class:`golden.sparse.SparseExecution`): its
    #: ``macs`` are the work the point performs (:func:`golden.eval.costs`).
    golden_run: object = None

    @property
    def ideal_cycles(self):
        return (self.embed.ideal_cycles + self.blocks.ideal_cycles + self.head.ideal_cycles)

    def plans(self, *, timeout=None):
        """One :class:`sim.driver.Plan` per block pass (see :mod:`hw.model`); the first loads
        every constant of the model first (streamed, :attr:`BlocksJob.streamed`: the
        embedding's, the head's and block 0's; each later pass its own block's). Between
        passes the tokens stay in the token buffer; the host loads a keep list after an STA
        stage block."""
        from sim.driver import Plan
        jobs = self.blocks.blocks
        # The head runs in the last block's pass, or, when STA prunes after the last block,
        # in a pass of its own on the tokens the host kept.
        head_pass = bool(jobs[-1].reports)
        plans = []
        for k, job in enumerate(jobs + ([None] if head_pass else [])):
            first, head = k == 0, k == len(jobs) - 1 + head_pass
            to_head = head and not head_pass            # the block's tokens go on to the head
            program, counters, started = [], {}, []
            if job is not None:
                program, counters, started = self._block_pass(k, job, to_head=to_head)
            if first:
                program += self._embed_program()
                started = ["embed_in", "embed", "pos"] + started
                counters.update(self._embed_counters())
            buffer, keep, buffer_counters = self._buffer_program(k, to_head=to_head)
            if buffer:
                program = keep + program + buffer
                started = ["buffer"] + started
                counters["buffer"] = buffer_counters
            if head:
                program += self._head_program(head_pass)
                started += ["head_select", "norm", "pool", "head_in", "head"]
                counters.update(self._head_counters())
            counters = {s: {"cycles": None, **c} for s, c in counters.items()}
            program += [("start", s, True) for s in reversed(started)]
            if job is not None and self.blocks.streamed:
                program = job.loads + program           # this block's constants, this pass
            outputs = ([("o", self.head.expected)] if head else []) + (job.reports if job else [])
            plans.append(Plan(name="{}/pass{}".format(self.name, k),
                              setup=(self.resident_loads() if first else []) + program,
                              inputs=[("i", self.pixels)] if first else [], outputs=outputs,
                              counters=counters, done=started,
                              timeout=timeout or int(3 * self.ideal_cycles) + 50_000))
        return plans

    def predicted_pass_cycles(self):
        """The cycle model's cycles of every pass (:func:`hw.cycles.pass_cycles`), in the order
        of :meth:`plans`."""
        jobs = self.blocks.blocks
        head_pass = bool(jobs[-1].reports)
        out = []
        for k, job in enumerate(jobs + ([None] if head_pass else [])):
            head = k == len(jobs) - 1 + head_pass
            work = None if job is None else dataclasses.replace(job.work, attention_skip=1)
            out.append(cycles.pass_cycles(
                self.config, work, embed=self.embed.work if k == 0 else None,
                head=self.head.work if head else None,
                pooled=self.pooled_tokens if head else None).cycles)
        return out

    @property
    def _d(self):
        return self.embed.registers[1][1]                     # d_out of the embedding

    def _tokens_in(self, k):
        """Tokens entering pass ``k``'s block (the head pass: the tokens pooled)."""
        jobs = self.blocks.blocks
        return jobs[k].stages["frame"]["tokens_out"] if k < len(jobs) else self.pooled_tokens

    def resident_loads(self):
        """The loads of the constants that stay on chip from clip to clip, which the first
        pass of the first clip sends: the embedding's, positional table, final LayerNorm's
        and classifier's, and the blocks' unless they are streamed."""
        cfg = self.config
        return ([("write", "embed", "layer", 0), ("pulse", "embed", ("reset_load",)),
                 ("load", "embed.w_load", self.embed.weights),
                 ("load", "embed.c_load", self.embed.channels),
                 ("pulse", "pos", ("reset_load",)), ("load", "pos.p_load", self.pos),
                 ("write", "norm", "layer", 0), ("pulse", "norm", ("reset_load",)),
                 ("load", "norm.p_load", ln_param_words(cfg, self.norm.gamma.tolist(),
                                                        self.norm.beta.tolist())),
                 ("write", "head", "layer", 0), ("pulse", "head", ("reset_load",)),
                 ("load", "head.w_load", self.head.weights),
                 ("load", "head.c_load", self.head.channels)]
                + ([] if self.blocks.streamed
                   else [step for b in self.blocks.blocks for step in b.loads]))

    def _block_pass(self, k, job, *, to_head):
        n = self._tokens_in(k)
        program = [s for s in job.program if s[0] != "start"]
        program += [("write", "select", "tokens", n), ("write", "select", "source", int(k > 0)),
                    ("write", "route", "tokens", n), ("write", "route", "dest", int(not to_head))]
        counters = dict(job.stages, select={"tokens_out": n}, route={"tokens_out": n})
        return program, counters, ["select"] + list(job.stages) + ["route"]

    def _buffer_program(self, k, *, to_head):
        """The buffer's settings for pass ``k`` (empty when it is not used), the keep-list load
        that goes before them, and its expected counters: a drain of what block ``k - 1`` left
        (listed after an STA stage), a fill with block ``k``'s output unless it goes to the
        head."""
        jobs = self.blocks.blocks
        drain = self._tokens_in(k) if k > 0 else 0
        fill = 0 if to_head or k == len(jobs) else self._tokens_in(k)
        if not (drain or fill):
            return [], [], {}
        keep = self.blocks.keeps[k - 1] if k > 0 else None
        program = [("pulse", "buffer", ("clear_error",)), ("write", "buffer", "d", self._d),
                   ("write", "buffer", "fill_tokens", fill),
                   ("write", "buffer", "drain_tokens", drain),
                   ("write", "buffer", "listed", int(keep is not None)),
                   ("write", "buffer", "dest", int(k == len(jobs)))]
        loads = [] if keep is None else [("pulse", "buffer", ("reset_load",)),
                                         ("load", "buffer.keep_load",
                                          [{"index": i} for i in keep])]
        return program, loads, {"tokens_in": fill, "tokens_out": drain}

    def _embed_program(self):
        n0 = self._tokens_in(0)
        return ([("write", "embed_in", "positions", self.n_s), ("write", "embed_in", "tokens", n0),
                 ("write", "embed_in", "listed", 0)]
                + self.embed.setup("embed", load=False)
                + [("write", "pos", "d", self._d), ("write", "pos", "tokens", n0)])

    def _embed_counters(self):
        n0 = self._tokens_in(0)
        return dict(embed_in={"tokens_out": n0}, pos={"tokens_out": n0},
                    embed={k: v for k, v in self.embed.counters().items() if k != "pairs"})

    def _head_program(self, head_pass):
        m, d = self.pooled_tokens, self._d
        return ([("write", "head_select", "tokens", m),
                 ("write", "head_select", "source", int(head_pass)),
                 ("pulse", "norm", ("clear_error",)), ("write", "norm", "layer", 0),
                 ("write", "norm", "d", d), ("write", "norm", "tokens", m),
                 ("write", "norm", "mult", self.norm.mult),
                 ("write", "norm", "shift", self.norm.shift),
                 ("write", "pool", "d", d), ("write", "pool", "tokens", m),
                 ("write", "head_in", "positions", 1),
                 ("write", "head_in", "tokens", 1), ("write", "head_in", "listed", 0)]
                + self.head.setup("head", load=False))

    def _head_counters(self):
        m = self.pooled_tokens
        return dict(head_select={"tokens_out": m}, norm={"tokens_out": m},
                    pool={"tokens_in": m, "tokens_out": 1}, head_in={"tokens_out": 1},
                    head={k: v for k, v in self.head.counters().items() if k != "pairs"})


def model_job(config, model, video, *, tau, rho, r=0, name="model"):
    """A job for the whole integer model ``model`` (:class:`golden.intvidt.IntVidT`) on one
    uint8 clip ``video`` ``[C, T, H, W]``: delta threshold ``tau`` on the blocks' projections,
    sub-vector keep ratio ``rho``, STA pruning ``r``. The expected logits are checked against
    :meth:`golden.intvidt.IntVidT.forward` under :class:`golden.sparse.SparseExecution` with
    the same settings."""
    from golden import contract, qtorch
    from golden.vidt import tubelets
    from hw.pos_add import pos_words
    from sim.linear_job import job_from_layer
    cfg = model.cfg
    n_s = cfg.n_s
    pixels = tubelets(video[None].to(torch.int64) - 128, cfg)[0]
    full = Tokens.full(1, cfg.n_t, n_s)
    embed = job_from_layer(config, model.embed, pixels, full.frame[0], full.spatial[0], n_s,
                           tau=None, delta_enable=False, name=name + "/embed")
    x0 = qtorch.saturate(embed.outputs + model.pos, contract.RESID)
    blocks = blocks_job(config, model, [x0], n_s, tau=tau, rho=rho, r=r, name=name)
    normed = model.norm(blocks.out[None])[0]
    pooled = qtorch.div_half_up(normed.sum(0, keepdim=True), normed.shape[0])
    zero = torch.zeros(1, dtype=torch.int64)
    head = job_from_layer(config, model.head, pooled, zero, zero, 1, tau=None,
                          delta_enable=False, name=name + "/head", logits=True)
    logits = head.outputs[0]
    run = SparseExecution(n_s, tau=tau,
                          attention=SubvectorAttention(config.lanes, rho) if rho < 1 else None,
                          pruner=_pruner([x0], n_s, r, len(model.blocks)))
    want = model.forward(video[None], run)[0]
    if not torch.equal(logits, want):
        raise AssertionError("Model job logits {} differ from IntVidT.forward's {}"
                             .format(logits.tolist(), want.tolist()))
    return ModelJob(name=name, config=config, blocks=blocks, embed=embed, head=head,
                    pos=pos_words(config, model.pos.tolist()), norm=model.norm,
                    pooled_tokens=normed.shape[0],
                    pixels=activation_beats(config, pixels), logits=logits, n_s=n_s, r=r,
                    n_t=cfg.n_t, heads=cfg.heads, head_dim=cfg.dim // cfg.heads,
                    golden_run=run)


#: A model small enough for simulators: 8 x 8 frames of 4 x 4 patches, two frames per tubelet
#: -> 4 token frames of 4 positions (16 tokens, STA's frame groups of four), tubelets of 32
#: pixels, d = 16 (2 heads), 2 blocks, 4 classes.
def _tiny_config():
    from golden.vidt import VidTConfig
    return VidTConfig(frames=8, height=8, width=8, tubelet=2, patch=4, dim=16, heads=2,
                      depth=2, mlp_ratio=4, num_classes=4)


TINY = _tiny_config()


def _tiny_hardware():
    from hw.config import preset
    return preset("tiny").replace(lanes=4, rows=2, requant_lanes=4, bitmap_word=8, max_d=16,
                                  max_heads=2, max_tokens=32, weight_depth=512, max_positions=8,
                                  max_layers=2, name="small_model")


#: The array that holds :data:`TINY` (2 rows x 4 lanes, both blocks' constants): the whole
#: model's configuration in make test.
TINY_RTSA = _tiny_hardware()
#: The same array holding one block's constants at a time: the host streams each block's
#: before its pass, as a board whose block RAM holds fewer blocks than the model does
#: (:attr:`BlocksJob.streamed`); make demo's default and the host link's end-to-end test.
TINY_STREAMED = TINY_RTSA.replace(max_layers=1, name="small_model_l1")


def tiny_model(seed):
    """A seeded untrained :data:`TINY` model quantised on 4 random clips, and 2 further clips:
    ``(IntVidT, videos [2, C, T, H, W] uint8)``. The same seed gives the same model in every
    process (the unit tests and the co-simulation testbench)."""
    from golden.intvidt import quantize_vidt
    from golden.vidt import VidT
    torch.manual_seed(seed)
    model = VidT(TINY).eval()
    g = torch.Generator().manual_seed(seed)
    videos = torch.randint(0, 256, (6, 1, TINY.frames, TINY.height, TINY.width), generator=g,
                           dtype=torch.uint8)
    return quantize_vidt(model, videos[:4]), videos[4:]
