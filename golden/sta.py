"""STA token pruning: Semantic-aware Temporal Accumulation (ICCV 2023), golden model.

Specification: the official implementation's details, written out below. Tokens are
dropped per *group* of token frames after three blocks, scored by their accumulated temporal
redundancy times one minus their normalised activation.

Schedule
--------
Stages run after blocks ``0``, ``L // 3`` and ``2 * L // 3`` (``L`` = depth; the benchmark's
``L = 4`` gives blocks 0, 1, 2). Where two stages fall on the same block (``L = 2``: 0, 0, 1;
``L = 1``: 0, 0, 0) they run back to back on that block's output, in stage order, the later
stage seeing the tokens and keys the earlier one kept: the schedule of token counts never
depends on ``L``. A stage after the last block still matters: it changes the mean pooling.

* stage 1: ``n_t`` groups of one frame (``n_s`` tokens), visited forward;
* stage 2: ``n_t / 2`` groups of two frames (``2 (n_s - r)`` tokens), visited in **reverse**
  (last pair first, accumulating backwards in time);
* stage 3: ``n_t / 4`` groups of four frames (``2 (2 n_s - 3 r)`` tokens), visited forward;

each drops ``r`` tokens per group, so ``8r, 4r, 2r`` for ``n_t = 8`` (``n_t`` must be a
multiple of 4). Every clip of a batch keeps the same *count* per group, so token tensors stay
rectangular ``[B, N', d]``; *which* tokens survive differs per clip. Each stage starts afresh
(its first visited group uses the bipartite rule); nothing is carried between stages.

Scoring within one stage
------------------------
``metric`` = block keys ``[B, heads, N, hd]`` averaged over heads and L2-normalised (a zero
vector stays zero, i.e. cosine 0 with everything); ``act`` = ``sum |x|`` of the block output.
Groups are visited in processing order:

1. **First group** (ToMe-style bipartite split, drop not merge): its tokens at even positions
   of the group's token order are set A, odd positions set B. Every B token is kept; the ``r``
   A tokens with the highest best-match cosine ``max_b cos(a, b)`` are dropped.
2. **Later groups**: transition ``T[i, j] = softmax_i(cos(cur_i, prev_j))``, a softmax over
   the *current* group's tokens (no temperature), so every column ``j`` sums to 1. The score is
   ``s_i = sum_j T[i, j] w_j`` where, for the second group, ``j`` runs over *all* tokens of the
   first group (dropped ones too) with ``w_j = 1`` (``s`` is the row sum), and for later
   groups over the previous group's kept tokens with ``w`` = their scores renormalised to sum 1.
3. **Selection** keeps the ``n - r`` tokens of smallest ``s * (1 - act_n)``, with ``act_n`` the
   activation min-max normalised within the group (``0`` where max == min). ``act_n`` only
   ranks tokens; the carried weights are plain scores.

A high score means "already seen": a token whose key resembles many previously kept tokens
collects their transition mass. Tokens of a static background therefore go before those of a
moving object.

Ties and determinism
--------------------
Selection is a *control decision*, computed in float64 from whatever tensors are given (float
keys and activations of :class:`golden.vidt.VidT`, or the int8 keys and int64 RESID tokens of
:class:`golden.intvidt.IntVidT`: equal values select identically). Ranking is a stable
ascending sort of the value, so ties are broken by position: **among equal values the token
earlier in the group's order is kept** (and, in the first group, among equal best-match
cosines the later even token is dropped). Every reduction (head mean, norms, dot products,
``sum |x|``, softmax denominators, score sums) is an explicit left-to-right loop of
element-wise float64 operations instead of BLAS or vectorised reductions, so the result does
not depend on the BLAS library, thread count or SIMD width. The one exception is ``exp`` in
the softmax, whose last bit may differ between math libraries (or vectorised and scalar code
paths); that can only flip a selection between two values within an ulp of each other. For
given inputs on one machine the result is bit-reproducible, and every operation is allowed
under ``torch.use_deterministic_algorithms(True)``.

Token order after pruning stays frame-major, original order within groups: the kept token list
is always sorted by original token index, even though stage 2 *visits* groups in reverse.
:attr:`STAPruner.positions` holds the original index ``f * n_s + s`` of every surviving token
(``frames`` / ``spatial`` split it), which the delta projection needs to find its per-position
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "stage_blocks", "key_metric", "key_metric_from_sum", "activation", "minmax_normalise",
    "cosine", "transition",
    "bipartite_keep", "keep_smallest", "StageRecord", "STAPruner", "forward_float_sta",
    "forward_int_sta",
]

_F64 = torch.float64


# --------------------------------------------------------------------------- metric helpers
def _ordered_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum along ``dim`` strictly left to right (fixed float rounding order)."""
    t = t.movedim(dim, 0)
    out = t[0].clone()
    for s in t[1:]:
        out = out + s
    return out


def stage_blocks(depth: int) -> tuple[int, int, int]:
    """Blocks after which the three stages run: ``(0, depth // 3, 2 * depth // 3)``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, not {depth}")
    return 0, depth // 3, 2 * depth // 3


def key_metric(keys: torch.Tensor) -> torch.Tensor:
    """Pruning metric: keys averaged over heads, L2-normalised, in float64.

    Parameters
    ----------
    keys : torch.Tensor
        ``[B, heads, N, head_dim]`` of any real or integer dtype.

    Returns
    -------
    torch.Tensor
        float64 ``[B, N, head_dim]`` unit vectors (zero where the mean key is zero).
    """
    k = keys.to(_F64)
    return key_metric_from_sum(_ordered_sum(k, 1), k.shape[1])


def key_metric_from_sum(key_sum: torch.Tensor, heads: int) -> torch.Tensor:
    """:func:`key_metric` from the keys summed over ``heads`` heads (``[B, N, head_dim]``,
    what the chip's STA report gives, :class:`hw.sta_report.KeyReport`): for integer keys the
    float64 head sum is exact, so both give the same bits."""
    mean = key_sum.to(_F64) / heads
    norm = torch.sqrt(_ordered_sum(mean * mean, -1))
    # A zero key has no direction: keep it zero (cosine 0) instead of 0/0 = NaN.
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm[..., None] > 0, mean / safe[..., None], torch.zeros_like(mean))


def activation(x: torch.Tensor) -> torch.Tensor:
    """Activation map ``sum |x|`` over the feature dimension, float64 ``[B, N]``."""
    return _ordered_sum(x.to(_F64).abs(), -1)


def minmax_normalise(act: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``act`` ``[B, n]`` per row into ``[0, 1]``; a constant row gives 0."""
    lo = act.amin(1, keepdim=True)
    span = act.amax(1, keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (act - lo) / safe, torch.zeros_like(act))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products of unit vectors, ``[B, n, h] x [B, m, h] -> [B, n, m]``.

    An explicit loop over ``h`` instead of a matmul: a fixed summation order.
    """
    out = a[:, :, None, 0] * b[:, None, :, 0]
    for k in range(1, a.shape[-1]):
        out = out + a[:, :, None, k] * b[:, None, :, k]
    return out


def transition(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Markov transition from the previous group's tokens to the current group's.

    Parameters
    ----------
    cur, prev : torch.Tensor
        Unit metrics ``[B, n, h]`` and ``[B, m, h]``.

    Returns
    -------
    torch.Tensor
        ``T`` ``[B, n, m]``, ``T[:, i, j] = softmax over i of cos(cur_i, prev_j)``: every column
        sums to 1. Cosines lie in ``[-1, 1]``, so ``exp`` needs no max subtraction.
    """
    e = torch.exp(cosine(cur, prev))
    return e / _ordered_sum(e, 1)[:, None, :]


def keep_smallest(value: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` smallest entries of each row of ``value`` ``[B, n]``.

    Ranking is a stable ascending sort, so among equal values the earlier position wins a
    place. Returns int64 ``[B, k]`` positions in ascending order.
    """
    order = torch.sort(value, dim=1, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def bipartite_keep(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First-group rule: ToMe bipartite split, drop the ``r`` most redundant even tokens.

    Parameters
    ----------
    metric : torch.Tensor
        Unit metrics of the group ``[B, n, h]`` in the group's token order.
    r : int
        Even tokens to drop, ``0 <= r <= ceil(n / 2)``.

    Returns
    -------
    keep : torch.Tensor
        int64 ``[B, n - r]`` kept positions, ascending (all odd positions among them).
    best : torch.Tensor
        float64 ``[B, ceil(n / 2)]`` best-match cosine of each even token among the odd ones.
    """
    b, n, _ = metric.shape
    n_even = (n + 1) // 2
    if not 0 <= r <= n_even:
        raise ValueError(f"cannot drop {r} of the {n_even} even tokens of a group of {n}")
    even, odd = metric[:, 0::2], metric[:, 1::2]
    if odd.shape[1] == 0:
        best = torch.full((b, n_even), -torch.inf, dtype=_F64)  # nothing to match (n == 1)
    else:
        best = cosine(even, odd).amax(-1)
    # Dropping the r largest = keeping the n_even - r smallest (ties keep the earlier even).
    keep_even = 2 * keep_smallest(best, n_even - r)
    odd_pos = torch.arange(1, n, 2).expand(b, -1)
    keep = torch.sort(torch.cat([keep_even, odd_pos], 1), dim=1).values
    return keep, best


# --------------------------------------------------------------------------- pruner
@dataclass
class StageRecord:
    """What one stage did, for inspection and tests. Group lists are in *time* order.

    Attributes
    ----------
    stage : int
        1, 2 or 3.
    block : int
        Block after which it ran.
    order : list of int
        Group indices in processing order (reversed for stage 2).
    group_size, kept : int
        Tokens per group before and after the stage.
    keep : torch.Tensor
        int64 ``[B, n_groups, kept]`` kept positions within each group, ascending.
    first_match : torch.Tensor
        ``[B, ceil(group_size / 2)]`` best-match cosines of the first processed group's evens.
    scores : list
        Per group, float64 ``[B, group_size]`` accumulated redundancy ``s`` before selection;
        ``None`` for the first processed group.
    values : list
        Per group, the selection values ``s * (1 - act_n)``; ``None`` for the first group.
    carried : list
        Per group, the renormalised scores of its kept tokens ``[B, kept]`` handed to the next
        group (``None`` for the first group, whose tokens are all carried with weight 1).
    """
    stage: int
    block: int
    order: list
    group_size: int
    kept: int
    keep: torch.Tensor
    first_match: torch.Tensor
    scores: list = field(default_factory=list)
    values: list = field(default_factory=list)
    carried: list = field(default_factory=list)


class STAPruner:
    """Per-clip-batch STA pruning state: call :meth:`prune` after every block.

    One instance serves one batch of clips for one forward pass. It also fits the pruning hook
    of :class:`golden.intvidt.Execution` (``prune(block, x, keys, tokens) -> (x, tokens)``),
    e.g. as the ``pruner`` of :class:`golden.sparse.SparseExecution`.

    Parameters
    ----------
    n_t, n_s : int
        Token frames (a multiple of 4) and tokens per frame of the unpruned clip.
    r : int or sequence of three ints
        Tokens dropped per group at each stage (0 disables pruning); three values give each
        stage its own (the layerwise search's choice; a stage at 0 keeps every token).
    depth : int
        Number of blocks ``L`` (sets the stage blocks, :func:`stage_blocks`).

    Attributes
    ----------
    blocks : tuple of int
        Block of each stage.
    schedule : list of dict
        Per stage: ``stage``, ``block``, ``n_groups``, ``group_size``, ``kept`` (per group),
        ``tokens_in``, ``tokens_out`` (per clip). Known before any data is seen.
    positions : torch.Tensor or None
        int64 ``[B, N']`` original token index ``f * n_s + s`` of each surviving token, in
        token order; ``None`` until the first :meth:`prune` call (all tokens, in order).
    records : list of StageRecord
        One per stage run so far.
    """

    def __init__(self, n_t: int, n_s: int, r, depth: int):
        if n_t < 4 or n_t % 4:
            raise ValueError(f"STA groups frames in fours at stage 3: n_t={n_t} must be a "
                             "positive multiple of 4")
        rs = tuple(r) if isinstance(r, (list, tuple)) else (r,) * 3
        if len(rs) != 3 or not all(isinstance(x, int) for x in rs):
            raise ValueError(f"r must be an int or three ints (one per stage), not {r!r}")
        if n_s < 1 or min(rs) < 0:
            raise ValueError(f"need n_s >= 1 and r >= 0, not n_s={n_s}, r={r}")
        self.n_t, self.n_s, self.r, self.depth = n_t, n_s, r, depth
        self.blocks = stage_blocks(depth)
        self.schedule = []
        tokens, n_groups, size = n_t * n_s, n_t, n_s
        for stage, (block, r) in enumerate(zip(self.blocks, rs), 1):
            if stage > 1:
                n_groups, size = n_groups // 2, 2 * kept
            # The first group drops evens only; every group must keep a token.
            if r > (size + 1) // 2 or r >= size:
                raise ValueError(f"r={r} too large: stage {stage} groups hold {size} tokens, "
                                 f"{(size + 1) // 2} of them at even positions")
            kept = size - r
            self.schedule.append(dict(stage=stage, block=block, n_groups=n_groups,
                                      group_size=size, kept=kept, r=r, tokens_in=tokens,
                                      tokens_out=n_groups * kept))
            tokens = n_groups * kept
        self.positions = None
        self.records = []
        self._next = 0          # index of the next stage to run

    # ---- token bookkeeping
    @property
    def num_tokens(self) -> int:
        """Tokens per clip at this point (after the stages run so far)."""
        return self.schedule[self._next - 1]["tokens_out"] if self._next else self.n_t * self.n_s

    @property
    def tokens_per_block(self) -> list[int]:
        """Tokens per clip entering each block ``0 .. depth-1`` (from the schedule)."""
        counts = []
        for i in range(self.depth):
            done = [s for s in self.schedule if s["block"] < i]
            counts.append(done[-1]["tokens_out"] if done else self.n_t * self.n_s)
        return counts

    @property
    def tokens_out(self) -> int:
        """Tokens per clip after the last stage (what the head pools)."""
        return self.schedule[-1]["tokens_out"]

    @property
    def kept_per_stage(self) -> list[int]:
        """Tokens per clip after each stage."""
        return [s["tokens_out"] for s in self.schedule]

    @property
    def dropped_per_stage(self) -> list[int]:
        """Tokens per clip dropped by each stage (``n_t r, n_t r / 2, n_t r / 4``)."""
        return [s["tokens_in"] - s["tokens_out"] for s in self.schedule]

    def kept_positions(self, batch: int) -> torch.Tensor:
        """:attr:`positions`, or all positions in order before the first stage."""
        if self.positions is None:
            return torch.arange(self.n_t * self.n_s).expand(batch, -1).clone()
        return self.positions

    @property
    def frames(self) -> torch.Tensor:
        """Token frame ``f`` of each surviving token, ``[B, N']``."""
        return self._positions() // self.n_s

    @property
    def spatial(self) -> torch.Tensor:
        """Spatial position ``s`` of each surviving token, ``[B, N']``."""
        return self._positions() % self.n_s

    def _positions(self):
        if self.positions is None:
            raise RuntimeError("no tokens pruned yet: use kept_positions(batch)")
        return self.positions

    # ---- pruning
    def prune(self, block_index: int, x: torch.Tensor, keys: torch.Tensor, tokens=None):
        """Run the stages due after block ``block_index`` (none, one, or several).

        Parameters
        ----------
        block_index : int
            Index of the block that produced ``x``; call for every block in order.
        x : torch.Tensor
            Block output ``[B, N, d]`` (float, or int64 RESID tokens).
        keys : torch.Tensor
            That block's attention keys ``[B, heads, N, head_dim]`` (float or int8/int64).
        tokens : golden.intvidt.Tokens, optional
            Frame / spatial position of each token of ``x``. When given, the call follows the
            pruning hook of :class:`golden.intvidt.Execution` and returns ``(x, tokens)``.

        Returns
        -------
        x : torch.Tensor
            ``x`` with the dropped tokens removed ``[B, N', d]``, same dtype, token order kept;
            ``x`` itself when no stage is due.
        tokens : golden.intvidt.Tokens
            Only when ``tokens`` was given: the same type, for the surviving tokens.
        """
        b, n = x.shape[:2]
        if keys.dim() != 4 or keys.shape[0] != b or keys.shape[2] != n:
            raise ValueError(f"keys {tuple(keys.shape)} do not match tokens {tuple(x.shape)}")
        idx = self._select(block_index, key_metric(keys), activation(x))
        if idx is not None:
            x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
        if tokens is None:
            return x
        if idx is not None:
            tokens = type(tokens)(self.frames, self.spatial)
        return x, tokens

    def prune_reported(self, block_index: int, key_sum: torch.Tensor, heads: int,
                       act: torch.Tensor):
        """:meth:`prune` from what the chip reports (:mod:`hw.sta_report`): the keys summed
        over ``heads`` heads ``[B, N, head_dim]`` and ``sum |x|`` per token ``[B, N]``, both
        exact integers, so the selection is bit-identical to :meth:`prune`'s on the tensors
        themselves. Returns the kept tokens' indices among the ``N`` reported ``[B, N']``
        (ascending), or None when no stage is due; :attr:`frames` and :attr:`spatial` follow.
        """
        return self._select(block_index, key_metric_from_sum(key_sum, heads), act.to(_F64))

    def _select(self, block_index, metric, act):
        """Run the stages due after ``block_index`` on the per-token ``metric`` ``[B, N, h]``
        and activation ``act`` ``[B, N]``; the kept indices among the ``N``, or None."""
        b, n = act.shape
        if n != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per clip, got {n}")
        if self.positions is not None and self.positions.shape[0] != b:
            raise ValueError(f"batch changed from {self.positions.shape[0]} to {b}")
        if self._next < 3 and self.blocks[self._next] < block_index:
            raise RuntimeError(f"stage {self._next + 1} (after block {self.blocks[self._next]})"
                               f" was skipped: prune() must be called after every block")
        kept = None
        while self._next < 3 and self.blocks[self._next] == block_index:
            pos = self.kept_positions(b)
            idx = self._run_stage(self.schedule[self._next], metric, act)
            metric = metric.gather(1, idx[..., None].expand(-1, -1, metric.shape[-1]))
            act = act.gather(1, idx)
            kept = idx if kept is None else kept.gather(1, idx)
            self.positions = pos.gather(1, idx)
            self._next += 1
        return kept

    def _run_stage(self, sched: dict, metric: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Select within each group; return int64 ``[B, N']`` kept token indices, ascending."""
        b = act.shape[0]
        n_groups, size, kept, r = (sched[k] for k in ("n_groups", "group_size", "kept", "r"))
        metric = metric.reshape(b, n_groups, size, -1)
        act = act.reshape(b, n_groups, size)
        order = list(range(n_groups))
        if sched["stage"] == 2:
            order.reverse()     # stage 2 accumulates backwards in time
        rec = StageRecord(stage=sched["stage"], block=sched["block"], order=order,
                          group_size=size, kept=kept, keep=None, first_match=None,
                          scores=[None] * n_groups, values=[None] * n_groups,
                          carried=[None] * n_groups)
        keep = [None] * n_groups
        prev_metric = prev_weight = None
        for step, g in enumerate(order):
            cur = metric[:, g]
            if step == 0:
                keep[g], rec.first_match = bipartite_keep(cur, r)
                # The next group sees every token of this one (dropped too), weight 1 each.
                prev_metric, prev_weight = cur, torch.ones(b, size, dtype=_F64)
                continue
            t = transition(cur, prev_metric)                            # [B, size, n_prev]
            score = _ordered_sum(t * prev_weight[:, None, :], 2)        # [B, size]
            value = score * (1.0 - minmax_normalise(act[:, g]))
            keep[g] = keep_smallest(value, kept)
            # Carry plain scores (no activation factor), renormalised to sum 1.
            carried = score.gather(1, keep[g])
            carried = carried / _ordered_sum(carried, 1)[:, None]
            prev_metric = cur.gather(1, keep[g][..., None].expand(-1, -1, cur.shape[-1]))
            prev_weight = carried
            rec.scores[g], rec.values[g], rec.carried[g] = score, value, carried
        rec.keep = torch.stack(keep, 1)                                 # [B, n_groups, kept]
        self.records.append(rec)
        offsets = torch.arange(n_groups)[None, :, None] * size
        return (rec.keep + offsets).reshape(b, n_groups * kept)


# --------------------------------------------------------------------------- forwards
def _stats(pruner: STAPruner, seen: list) -> dict:
    if seen != pruner.tokens_per_block:
        raise AssertionError(f"token counts {seen} differ from schedule {pruner.tokens_per_block}")
    return dict(tokens_per_block=seen, tokens_out=pruner.tokens_out,
                stage_blocks=pruner.blocks, kept_per_stage=pruner.kept_per_stage,
                dropped_per_stage=pruner.dropped_per_stage, positions=pruner.positions,
                pruner=pruner)


@torch.no_grad()
def forward_float_sta(model, videos: torch.Tensor, r: int):
    """Float :class:`golden.vidt.VidT` forward with STA pruning (its ``prune`` hook).

    Parameters
    ----------
    model : golden.vidt.VidT
    videos : torch.Tensor
        Float clips ``[B, C, T, H, W]``.
    r : int
        Tokens dropped per group per stage.

    Returns
    -------
    logits : torch.Tensor
        ``[B, num_classes]``.
    stats : dict
        ``tokens_per_block`` (tokens per clip entering each block), ``tokens_out`` (pooled by
        the head), ``stage_blocks``, ``kept_per_stage``, ``dropped_per_stage``, ``positions``
        (``[B, tokens_out]`` original indices) and the ``pruner`` itself.
    """
    cfg = model.cfg
    pruner = STAPruner(cfg.n_t, cfg.n_s, r, cfg.depth)
    seen = []

    def prune(block, x, keys):
        seen.append(x.shape[1])     # a block keeps its tokens: the count that entered it
        return pruner.prune(block, x, keys)
    return model(videos, prune=prune), _stats(pruner, seen)


def _sta_execution(pruner: STAPruner):
    # Imported here so that the float path does not need the integer model.
    from golden.intvidt import Execution

    class STAExecution(Execution):
        """Dense execution of the integer model with STA pruning after each block."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def prune(self, block, x, keys, tokens):
            self.seen.append(x.shape[1])
            return pruner.prune(block, x, keys, tokens)

    return STAExecution()


@torch.no_grad()
def forward_int_sta(qmodel, videos: torch.Tensor, r: int):
    """Integer :class:`golden.intvidt.IntVidT` forward with STA pruning.

    Same as :func:`forward_float_sta` but on uint8 clips, through the model's execution hook
    (:meth:`golden.intvidt.Execution.prune`); the tokens stay int64 RESID values and the
    logits are the head's integer accumulators. Only the (float64) selection is not integer
    arithmetic; it decides which integer tokens continue. ``stats`` also holds ``macs``, the
    execution's ``(block, layer) -> LayerCount`` MAC accounting of the pruned run.
    """
    cfg = qmodel.cfg
    pruner = STAPruner(cfg.n_t, cfg.n_s, r, cfg.depth)
    run = _sta_execution(pruner)
    logits = qmodel.forward(videos, run)
    stats = _stats(pruner, run.seen)
    stats["macs"] = run.macs
    return logits, stats
