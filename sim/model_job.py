"""Several transformer blocks of a model on one :class:`hw.block.Block`, their constants all
on chip, with the golden expectation.

Every stage that holds constants keeps ``max_layers`` parts (:data:`hw.engine.LAYER`). A run
loads every block's weights, channel constants, LayerNorm parameters and GELU table once, then
runs the blocks one after the other: before each, the host writes the block's ``layer`` and
its scalar settings (token counts, LayerNorm and attention requantisation constants, a few
words per stage) and starts the stages; the block's input is the previous block's output.
Between blocks the pipeline drains (the next block starts when the last stage of the previous
one is DONE): those cycles are in each block's count.

STA pruning (``r > 0``): a stage block reports each token's keys summed over heads and its
``sum |x|`` (:mod:`hw.sta_report`; the job checks both streams); the host selects the tokens
with :class:`golden.sta.STAPruner` (the metric from the head sums is bit-identical to the
metric from the keys, :func:`golden.sta.key_metric_from_sum`) and sends the next block only
the kept tokens, with their spatial positions as the projections' position lists (the ragged
token set; each delta reference stays with its position).

What is not on chip yet: the token buffer between blocks (the host feeds block ``l + 1`` with
block ``l``'s output, pruned), the embedding and the head.

The expectation of each block is :func:`sim.block_job.block_job`'s (itself checked against
:meth:`golden.intvidt.IntBlock.forward`); for a single sequence the chain is also checked
against the blocks of the integer model run back to back under one
:class:`golden.sparse.SparseExecution`, the way :meth:`golden.intvidt.IntVidT.forward` runs
them (without pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden.intvidt import Tokens
from golden.sparse import SparseExecution
from golden.sta import STAPruner
from golden.subvector import SubvectorAttention
from sim.block_job import block_job

__all__ = ["BlocksJob", "blocks_job"]


@dataclass
class BlocksJob:
    """Blocks run back to back on one :class:`hw.block.Block`.

    Attributes
    ----------
    blocks : list of :class:`sim.block_job.BlockJob`
        One per block, in order; block ``l`` holds its constants in layer ``l``.
    out : torch.Tensor
        The last block's expected output ``[N_total, d]`` (pruned, if its block is a stage
        block: what the head pools).
    """
    name: str
    config: object
    blocks: list
    out: torch.Tensor

    @property
    def ideal_cycles(self):
        return sum(b.ideal_cycles for b in self.blocks)

    @property
    def load_beats(self):
        return sum(b.load_beats for b in self.blocks)

    def plans(self, *, timeout=None):
        """One :class:`sim.driver.Plan` per block: the first loads every block's constants
        before it programs and starts its own run; the others only program and start."""
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
    for ``depth`` blocks)."""
    depth = len(model.blocks) if depth is None else depth
    if not 1 <= depth <= len(model.blocks):
        raise ValueError("depth must be 1 .. {} (the model's blocks), not {!r}"
                         .format(len(model.blocks), depth))
    if depth > config.max_layers:
        raise ValueError("{} blocks do not fit a configuration of max_layers {}"
                         .format(depth, config.max_layers))
    n = xs[0].shape[0]
    pruner = _pruner(xs, n_s, r, depth)
    tokens = Tokens.full(1, n // n_s, n_s) if pruner else None
    jobs, seqs, ragged = [], list(xs), False
    for b in range(depth):
        stage = pruner is not None and b in pruner.blocks
        job = block_job(config, model.blocks[b], seqs, n_s, tau=tau, rho=rho,
                        delta_enable=delta_enable, name="{}/block{}".format(name, b), block=b,
                        tokens=tokens if ragged else None, report=stage)
        jobs.append(job)
        if stage:
            # The host's selection (from what the chip reported, which the job checks).
            x, tokens = pruner.prune(b, job.out[None], job.keys[None], tokens)
            seqs, ragged = [x[0]], True
        else:
            seqs = list(job.out.split(n))
    out = seqs[0] if pruner else jobs[-1].out
    if len(xs) == 1:
        _check_against_model(model, xs[0], out, n_s, depth, tau if delta_enable else None,
                             rho, r, config.lanes)
    return BlocksJob(name=name, config=config, blocks=jobs, out=out)


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
