"""Cycle model of the generated accelerator: the schedule of the RTL, without the RTL.

This module imports no Amaranth. It predicts the ``cycles`` counter of every engine and of the
pipelines that share one PE array, from the configuration (:class:`hw.config.RTSAConfig`:
rows, lanes, requantisers, decode width, bitmap word, requantiser steps) and the workload
(:class:`LinearWork`: elements sent per token and bitmap word; :class:`AttentionWork`: kept
key columns per query block and head), so that a configuration can be judged before it is
built, at sizes no RTL simulation reaches (``python -m sim.bench_cycles``).

What it models is the schedule itself, accumulation by accumulation, not MACs / (R v):

* **The PE array** (:class:`ArraySchedule`, :mod:`hw.pe_array`, :mod:`hw.pe_arbiter`): one
  accumulation at a time, round robin at accumulation boundaries among the clients with a
  beat ready (switching costs no cycle). A closing beat enters the output bank
  :data:`PIPE` cycles after it is issued and waits while the bank still drains the previous
  accumulation (``rows x lanes / requant_lanes`` cycles), so short accumulations cost the
  drain, not their beats. Rows reach the client ``requant_steps + 2`` cycles after leaving the
  bank. A client that cannot take its rows (the softmax unit still busy) holds the bank and
  so the array, unless it sits behind a :class:`hw.pipeline.ResultReserve` (the multi-client
  pipelines), which instead holds the client's next accumulation until two accumulations'
  rows have room.
* **The linear engine** (:func:`linear_client`, :mod:`hw.linear_engine`): the delta encoder
  takes a word a cycle, or ``ceil(n / k)`` cycles for a word with ``n > k`` sent values; the
  decoded pairs go to a two-slot pair buffer, whose slot gates their writes (the encoder runs
  ahead; the pairs wait in a register slice); the feeder issues, per output chunk of
  ``rows x lanes`` channels, one beat per sent pair (at least one).
* **The attention engine** (:func:`attention_client`, :mod:`hw.attention_engine`): a
  sequence starts when all its QKV beats are in its slot; per query block, ``ceil(n / rows)``
  QK^T groups of ``head_dim`` beats, then ``ceil(head_dim / rows)`` A V passes of ``n`` beats
  each, in the order ``QK(0) QK(1) AV(0) QK(2) AV(1) ...`` (a sequence's last block runs A V
  at once); the issuer's state changes cost the bubbles the FSM has (2 cycles between two
  blocks' QK^T, 3 before an A V, none after one); the softmax unit takes one block at a time,
  ``3 n + 23`` cycles from its first score to its last probability, into two probability
  slots.
* **The run-through** (:func:`run_through_cycles`): both on one array, the sequence gate
  (a sequence's tokens enter the projection once sequence ``s - 2`` has left attention) and
  the QKV beats of a sequence filling attention's slot.
* **A block** (:func:`block_cycles`, :mod:`hw.block`): six clients behind result reserves,
  the predictor's products (:func:`predictor_client`) and its keep selection, one block at a
  time (:func:`keep_select_masks`), LayerNorm's serial statistics, the transposing buffer,
  GELU, the skip FIFOs; **a pass of the whole model** (:func:`pass_cycles`, :mod:`hw.model`)
  adds the embedding before it and the final LayerNorm, pooling and head after it.
* **Split engines** (``split=``): the projections on one array, predictor and attention on
  another, both advancing together (:class:`ArraySchedule` with ``arrays``), for comparing
  the run-through array with designs that have a dedicated attention engine.
* **The latency oracle** (:func:`model_cycles`): a model's blocks from their sparsity
  (:class:`BlockSparsity`: tokens, the fraction each projection sends, the keep ratio), for a
  sparsity search.

The constants below are the RTL's structural latencies; each says where it comes from, and
``make bench`` checks every prediction against the Verilator measurement (within
:data:`TOLERANCE`). What the model leaves out: input and output streams are taken to flow at
full rate (the benches' condition: no stalls), and the loader, the decoders and the output
stages are taken to keep ahead of the array except where stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from golden import contract, macs

__all__ = ["TOLERANCE", "LinearWork", "AttentionWork", "BlockWork", "BlockSparsity", "Result",
           "ArraySchedule", "linear_client", "attention_client", "predictor_client",
           "keep_select_masks", "linear_cycles", "attention_cycles", "run_through_cycles",
           "block_cycles", "block_work", "model_cycles", "block_macs", "ideal_linear_macs",
           "ideal_attention_macs", "layernorm_stats_cycles"]

#: The largest relative error of a prediction against the RTL that ``make bench`` accepts.
TOLERANCE = 0.03

#: Cycles from issuing a beat to its products in the accumulators: the operand routing
#: register, the product register, the accumulator (hw.pe_array stages A, B, C).
PIPE = 3
#: Extra cycles between two closing beats beyond the bank's drain: the stall is a register,
#: decided one cycle ahead (hw.pe_array: ``stall``). Calibrated: a one-pair token right after
#: a long one closes 10 cycles after it on the ``vidt`` array (8 rows: drain 8).
CLOSE_GAP = 1
#: Cycles from a token's last word at the delta encoder to its first beat at the array: encoder
#: (4 to the bitmap word, 5 to the first values), value slice, decoder, pair slice, pair-buffer
#: write, feeder S0 .. S2, less what overlaps. Calibrated with PAIR_WRITE: tokens of one
#: bitmap word and one output chunk follow each other as the RTL's do (tests/test_cycles.py:
#: 94 against 94 cycles dense, 56 against 56 delta, with the encoder's stage 1c and the
#: output stage's O1b; the benchmark's layers within 0.94 %).
LINEAR_FILL = 8
#: Cycles from the pair buffer's slot freeing to the feeder starting the token whose pairs
#: waited for it in the pair slice (the pairs written, the slot full, S0). The encoder does not
#: wait for the slot (the token infos' FIFO lets it run ahead).
PAIR_WRITE = 1
#: Output stage of the linear engine: O0 (reference read), O1 (y = y_ref + acc), O1b
#: (multiply), O2 (requantise) -> ``o``.
LINEAR_OUT = 4
#: The attention issuer's bubbles (cycles without a beat), from its FSM (hw.attention_engine):
#: QK -> IDLE -> QK between two blocks' QK^T; -> IDLE -> AV -> S0 -> S1 -> S2 before an A V
#: pass; none from A V to QK^T (the next group is taken while S1, S2 drain).
QK_AFTER_QK, AV_AFTER_ANY, QK_AFTER_AV = 2, 3, 0
#: From a sequence slot becoming full to its first QK^T beat: WAIT -> Q_LOAD (``lanes`` Q rows)
#: -> the first group's items (one a cycle) -> pend -> issue.
ATTENTION_START = 4
#: Cycles the linear engine's counter runs past its last output beat: the ``tokens_out``
#: counter and ``finished`` are registers, then ``running`` drops (hw.engine). Calibrated:
#: with it the model is exact on the benchmark's four dense layers.
LINEAR_TAIL = 4
#: From the softmax unit's last probability to the issuer seeing the slot full (pfull).
PFULL = 1
#: The softmax unit's passes beyond one cycle a word (hw.softmax_unit, which takes them from
#: here): exponent = read, operands, product, t, e; output = read, operands, product, output.
SOFTMAX_EXP_PIPELINE, SOFTMAX_OUT_PIPELINE = 5, 4
#: From a sequence's keys all being in to the predictor's first product beat: the loader takes
#: the first key group's rows (``lanes`` of them, added below) and the unit group's pooled
#: queries.
PREDICT_START = 3
#: From a block's mask beat being valid to its loader starting on the block's Q rows: the
#: mask decoder's register stages (hw.subvector_decoder).
MASK_TO_QK = 3


#: The block's projections, in block order (hw.block.PROJECTIONS).
PROJECTIONS = ("qkv", "proj", "fc1", "fc2")
#: The PE clients that run on the attention array of a split design.
ATTENTION_CLIENTS = ("predict", "attention")


def _ceil(a, b):
    return -(-a // b)


# --- Workloads. -------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearWork:
    """One token-wise linear layer: ``d_in`` inputs, ``d_out`` outputs, and per token the
    elements it sends per bitmap word (``sent[t][w]``, ``d_in / bitmap_word`` words; a dense
    token sends all of them)."""
    d_in: int
    d_out: int
    sent: tuple

    @classmethod
    def from_bitmap(cls, bitmap, d_out, bitmap_word):
        """From a token bitmap ``[N][d_in]`` of sent elements (nested sequences of bools)."""
        rows = []
        for tok in bitmap:
            tok = [bool(b) for b in tok]
            rows.append(tuple(sum(tok[w:w + bitmap_word])
                              for w in range(0, len(tok), bitmap_word)))
        return cls(len(bitmap[0]), d_out, tuple(rows))

    @classmethod
    def from_counts(cls, counts, d_in, d_out, bitmap_word):
        """From per-token sent counts, spread as evenly as possible over the bitmap words."""
        words = d_in // bitmap_word
        rows = []
        for n in counts:
            n = int(n)
            if not 0 <= n <= d_in:
                raise ValueError("a token sends 0 .. {} elements, not {!r}".format(d_in, n))
            rows.append(tuple(n // words + (w < n % words) for w in range(words)))
        return cls(d_in, d_out, tuple(rows))

    @classmethod
    def dense(cls, tokens, d_in, d_out, bitmap_word):
        return cls.from_counts([d_in] * tokens, d_in, d_out, bitmap_word)

    @property
    def tokens(self):
        return len(self.sent)

    @property
    def sent_elements(self):
        return sum(map(sum, self.sent))


@dataclass(frozen=True)
class AttentionWork:
    """Attention of ``sequences`` sequences of ``tokens`` tokens, ``heads`` heads of
    ``head_dim``: ``kept[s][h][b]`` key columns kept for query block ``b`` (``lanes``
    queries)."""
    tokens: int
    heads: int
    head_dim: int
    kept: tuple

    @classmethod
    def uniform(cls, tokens, heads, head_dim, lanes, keep, sequences=1):
        """Every block keeps ``keep`` columns (the predictor's top ``ceil(rho N)``)."""
        blocks = _ceil(tokens, lanes)
        return cls(tokens, heads, head_dim,
                   tuple(tuple(tuple([keep] * blocks) for _ in range(heads))
                         for _ in range(sequences)))

    @property
    def sequences(self):
        return len(self.kept)


@dataclass(frozen=True)
class BlockWork:
    """One transformer block (:class:`hw.block.Block`): its four projections (``qkv``,
    ``proj``, ``fc1``, ``fc2``: :class:`LinearWork` of ``sequences x tokens`` tokens each) and
    its attention; ``predict``: the on-chip predictor chooses the kept columns (False: dense
    attention, no products); ``attention_skip`` and ``mlp_skip``: the skip FIFOs
    (:func:`hw.block.block_skips`)."""
    qkv: LinearWork
    proj: LinearWork
    fc1: LinearWork
    fc2: LinearWork
    attention: AttentionWork
    predict: bool = True
    attention_skip: int = 2
    mlp_skip: int = 8

    def __post_init__(self):
        n = self.attention.tokens * self.attention.sequences
        for name in PROJECTIONS:
            if getattr(self, name).tokens != n:
                raise ValueError("{} must run sequences x tokens = {} tokens, not {}".format(
                    name, n, getattr(self, name).tokens))

    @property
    def layers(self):
        return {name: getattr(self, name) for name in PROJECTIONS}


def ideal_linear_macs(work):
    """Performed MACs of a linear layer (:func:`golden.macs.linear`: sent elements x
    ``d_out``, the engine's ``mac_lanes``)."""
    return macs.linear(work.sent_elements, work.d_out)


def ideal_attention_macs(work, lanes):
    """Performed MACs of attention: kept score entries x ``head_dim``, for QK^T and for A V
    (the engine's ``mac_lanes``; lanes past ``N`` in a partial block do nothing)."""
    kept = 0
    for seq in work.kept:
        for head in seq:
            for b, n in enumerate(head):
                kept += n * min(lanes, work.tokens - b * lanes)
    return macs.attention(kept, work.head_dim)


# --- The shared array. -------------------------------------------------------------------


@dataclass
class Acc:
    """An accumulation a client asks the array for: ``beats`` beats, the first issued no
    earlier than ``ready`` (an int, or a function returning one, or None while it is not
    known yet), its rows taken no earlier than ``accept``."""
    ready: object
    beats: int
    accept: int = 0
    kind: str = ""


@dataclass
class Grant:
    """When the array ran an accumulation: its first and last beat's issue cycles, and the
    cycles its first and last result row were taken by the client."""
    start: int
    end: int
    first_row: int
    last_row: int


@dataclass
class Result:
    """A prediction: ``cycles`` (START to the last output), and per client its ``busy`` (cycles
    the array took one of its beats) and ``accumulations``."""
    cycles: int
    busy: dict = field(default_factory=dict)
    accumulations: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)

    @property
    def array_busy(self):
        return sum(self.busy.values())


class _Array:
    """The state of one PE array: its configuration, clients and schedule so far."""

    def __init__(self, config, names):
        self.config, self.names = config, list(names)
        groups = config.lanes // config.requant_lanes
        self.drain = config.rows * groups           # output bank: a group of lanes a cycle
        self.out = config.requant_steps + 2         # requantiser, row assembly, o register
        self.row_step = groups
        self.t = 0                                  # next free issue cycle
        self.drain_end = -10 ** 9                   # the bank has drained the last accumulation
        self.last_close = -10 ** 9
        self.last_grant = len(self.names) - 1


class ArraySchedule:
    """The PE array and its arbiter, accumulation by accumulation.

    ``clients`` maps a name to a generator that yields :class:`Acc` requests in its issue
    order and receives a :class:`Grant` for each. ``reserve``: every client sits behind a
    :class:`hw.pipeline.ResultReserve` (a pipeline with more than one client): its rows never
    hold the array, and the client opens an accumulation only once the rows of its
    accumulation before the previous one have been taken.

    ``arrays`` (optional) maps each client to one of several arrays, ``{client: (array,
    config)}``: each array runs its own clients (a design with separate engines); the arrays
    advance together, so that a client on one can wait on events of another. Default: one
    array of ``config``."""

    def __init__(self, config, clients, *, reserve=None, arrays=None):
        self.clients = dict(clients)
        self.reserve = len(self.clients) > 1 if reserve is None else reserve
        arrays = arrays or {n: ("array", config) for n in self.clients}
        self.arrays = {}
        for n in self.clients:
            key, cfg = arrays[n]
            if key not in self.arrays:
                self.arrays[key] = _Array(cfg, [])
            self.arrays[key].names.append(n)
            self.arrays[key].last_grant = len(self.arrays[key].names) - 1

    def _candidate(self, arr, pending, history):
        """``(cycle, client)``: the next grant of ``arr``, or None if no client of it is
        ready."""
        ready = {}
        for n in arr.names:
            if n not in pending:
                continue
            acc = pending[n]
            r = acc.ready() if callable(acc.ready) else acc.ready
            if r is None:
                continue
            if self.reserve and len(history[n]) >= 2:
                r = max(r, history[n][-2].last_row + 1)
            ready[n] = r
        if not ready:
            return None
        now = max(arr.t, min(ready.values()))
        k = len(arr.names)
        order = [arr.names[(arr.last_grant + i) % k] for i in range(1, k + 1)]
        return now, next(c for c in order if c in ready and ready[c] <= now)

    def _grant(self, arr, n, acc, start):
        end = max(start + acc.beats - 1, arr.drain_end - PIPE + CLOSE_GAP, arr.last_close + 1)
        drain_start = max(end + PIPE, arr.drain_end)
        if not self.reserve:
            # Rows the client cannot take yet stay in the output path and the bank.
            drain_start = max(drain_start, acc.accept - arr.out - 1)
        arr.drain_end = drain_start + arr.drain
        first = drain_start + arr.row_step - 1 + arr.out
        last = drain_start + arr.drain - 1 + arr.out
        if self.reserve:
            first, last = first + 1, last + 1          # the reserve's FIFO
        first = max(first, acc.accept)
        last = max(last, first + arr.config.rows - 1)
        arr.last_close = end
        arr.t = end + 1
        arr.last_grant = arr.names.index(n)
        return Grant(start, end, first, last)

    def run(self):
        """Runs every client to its end: ``(busy, accumulations, grants)`` per client."""
        gens = self.clients
        pending = {}
        for n, gen in gens.items():
            try:
                pending[n] = next(gen)
            except StopIteration:
                pass
        history = {n: [] for n in gens}
        busy = {n: 0 for n in gens}
        while pending:
            best = None
            for arr in self.arrays.values():
                cand = self._candidate(arr, pending, history)
                if cand is not None and (best is None or cand[0] < best[0]):
                    best = cand + (arr,)
            if best is None:
                raise RuntimeError("cycle model deadlock: clients {} wait on each other"
                                   .format(", ".join(sorted(pending))))
            now, n, arr = best
            acc = pending[n]
            grant = self._grant(arr, n, acc, now)
            history[n].append(grant)
            busy[n] += acc.beats
            try:
                pending[n] = gens[n].send(grant)
            except StopIteration:
                del pending[n]
        return busy, {n: len(h) for n, h in history.items()}, history


# --- Clients. ------------------------------------------------------------------------------


def _encoder_cycles(config, words):
    """Delta-encoder cycles of a token (hw.delta_encoder: a word a cycle, ``ceil(n / k)``
    for a word with more than ``k`` sent values, one more at the end of a token whose last
    word leaves more than ``k``)."""
    k = config.decode_width
    cycles = sum(max(1, _ceil(n, k)) for n in words)
    return cycles + (1 if words and words[-1] > k else 0)


def linear_client(config, work, events, *, name="linear", token_ready=None):
    """The linear engine's accumulations; records ``events[(name, "out", t)]`` (the cycle token
    ``t``'s last output beat leaves), ``(name, "first", t)`` (its first output beat) and
    ``(name, "take", t)`` (the cycle the encoder takes its first word). ``token_ready(t)``:
    the cycle token ``t``'s first word may enter, or ``(first, last)``, the cycles its first
    and last word arrive when taken at once (a source slower than a word a cycle; a later
    start delays both); None while unknown; default 0, a source at full rate."""
    chunks = _ceil(work.d_out, config.rows * config.lanes)
    k = config.decode_width
    enc_end = 0                 # the encoder's last cycle on the previous token
    feed_start = []             # first-beat issue cycle of each token
    for t, words in enumerate(work.sent):
        n = sum(words)
        state = {}

        def ready(t=t, words=words, state=state):
            if "avail" not in state:
                arrive = 0 if token_ready is None else token_ready(t)
                if arrive is None:
                    return None
                first, last = arrive if isinstance(arrive, tuple) else (arrive, None)
                # The pair buffer's slot of token t is free once the feeder left t - 2; it
                # gates the writes of t's pairs, which wait in the pair slice meanwhile (the
                # encoder runs ahead: the token infos' FIFO), PAIR_WRITE cycles before the
                # feeder can start t (pairs written, the slot full, S0).
                slot = feed_start[t - 1] - 2 + PAIR_WRITE if t >= 1 else 0
                start = max(enc_end, first)
                end = start + _encoder_cycles(config, words)
                if last is not None:
                    # The last word, delayed as the first was, then its own cycles.
                    lw = words[-1]
                    end = max(end, last + start - first + max(1, _ceil(lw, k))
                              + (1 if lw > k else 0))
                events[(name, "take", t)] = start
                state["enc_end"] = end
                state["avail"] = max(end + LINEAR_FILL, slot + end - start)
            return state["avail"]

        for c in range(chunks):
            grant = yield Acc(ready if c == 0 else 0, max(1, n), kind="linear")
            if c == 0:
                feed_start.append(grant.start)
                enc_end = state["enc_end"]
                events[(name, "first", t)] = grant.first_row + LINEAR_OUT
        events[(name, "out", t)] = grant.last_row + LINEAR_OUT


def _attention_blocks(config, work):
    V = config.lanes
    blocks = []
    for s, seq in enumerate(work.kept):
        for h, head in enumerate(seq):
            for b, n in enumerate(head):
                blocks.append({"seq": s, "head": h, "block": b, "n": max(1, n),
                               "seq_last": h == work.heads - 1 and b == len(head) - 1,
                               "first_of_seq": h == 0 and b == 0})
    if any(len(head) != _ceil(work.tokens, V) for seq in work.kept for head in seq):
        raise ValueError("kept must give every head {} query blocks".format(
            _ceil(work.tokens, V)))
    return blocks


def attention_client(config, work, events, *, name="attention", seq_full=None,
                     mask_ready=None):
    """The attention engine's accumulations (see the module docstring); records
    ``events[(name, "release", s)]`` (sequence ``s`` leaves its QKV slot), ``(name, "seq_done",
    s)`` (its last output beat) and ``(name, "done")`` (the last output beat). ``seq_full(s)``:
    the cycle sequence ``s``'s slot is full; ``mask_ready(k)``: the cycle block ``k``'s mask
    beat is valid (default: masks at full rate); either None while unknown."""
    R, HD = config.rows, work.head_dim
    passes = _ceil(HD, R)
    blocks = _attention_blocks(config, work)
    qk = av = 0
    last_kind, last_end = None, -1
    sm_free = 0                       # the softmax unit takes the next block's first score
    sm_done = {}                      # block -> cycle its probabilities are all in (pfull)
    slot_free = {}                    # block -> cycle its probability slot is free again
    while av < len(blocks):
        pending = qk - av
        want_av = pending == 2 or (pending == 1 and blocks[av]["seq_last"]) or qk == len(blocks)
        if want_av:
            blk = blocks[av]
            n = blk["n"]
            for p in range(passes):
                ready = (max(last_end + 1 + AV_AFTER_ANY, sm_done[av] + PFULL + 2)
                         if p == 0 else 0)
                grant = yield Acc(ready, n, kind="av")
            last_end = grant.end
            slot_free[av] = grant.end - 1          # S0 left the block two beats before
            if blk["seq_last"]:
                events[(name, "release", blk["seq"])] = grant.end
                events[(name, "seq_done", blk["seq"])] = grant.last_row + 1
            events[(name, "done")] = grant.last_row + 1
            last_kind = "av"
            av += 1
            continue
        blk = blocks[qk]
        n = blk["n"]
        groups = _ceil(n, R)
        first_row = last_row = None
        for g in range(groups):
            if g == 0:
                gap = QK_AFTER_AV if last_kind == "av" else QK_AFTER_QK
                ready = last_end + 1 + gap
                if blk["first_of_seq"] or mask_ready is not None:

                    def ready(s=blk["seq"], base=ready, first=blk["first_of_seq"], k=qk, n=n):
                        full = 0 if seq_full is None or not first else seq_full(s)
                        mask = 0 if mask_ready is None else mask_ready(k)
                        if full is None or mask is None:
                            return None
                        # The loader takes the block's Q rows and its first group's columns
                        # once the slot is full and its mask beat is in.
                        return max(base, full + ATTENTION_START + config.lanes + min(R, n) + 1,
                                   mask + MASK_TO_QK + config.lanes + min(R, n))
                accept = sm_free
            else:
                ready, accept = 0, 0
            grant = yield Acc(ready, HD, accept=accept, kind="qk")
            if g == 0:
                first_row = grant.first_row
            last_row = grant.last_row
        last_end = grant.end
        last_kind = "qk"
        # The softmax unit: load (one score row a cycle as they come), exponent pass,
        # reciprocal, output pass into a probability slot (free once A V of block - 2 left).
        load_end = max(last_row, first_row + n - 1)
        out_start = max(load_end + n + SOFTMAX_EXP_PIPELINE
                        + contract.SOFTMAX_RECIP_QUOTIENT_BITS, slot_free.get(qk - 2, 0))
        sm_done[qk] = out_start + n + SOFTMAX_OUT_PIPELINE
        sm_free = sm_done[qk] + 1
        qk += 1


def predictor_client(config, work, events, *, name="predict", seq_full=None):
    """The on-chip predictor's products (:mod:`hw.predictor`): per sequence, head and *unit
    group* of ``rows`` query blocks, one accumulation of ``head_dim`` beats per *key group* of
    ``lanes`` keys, once the sequence's keys are all in (``seq_full(s)``). Records
    ``events[(name, "unit", s, h, u)]``, the cycle the unit group's last score row is in."""
    R, V = config.rows, config.lanes
    blocks = _ceil(work.tokens, V)
    for s in range(work.sequences):
        for h in range(work.heads):
            for u in range(_ceil(blocks, R)):
                for g in range(blocks):
                    ready = 0
                    if h == 0 and u == 0 and g == 0:
                        def ready(s=s):
                            full = 0 if seq_full is None else seq_full(s)
                            return None if full is None else full + PREDICT_START + V
                    grant = yield Acc(ready, work.head_dim, kind="predict")
                events[(name, "unit", s, h, u)] = grant.last_row


def keep_select_masks(config, work, events, *, name="predict"):
    """``mask_ready(k)`` for :func:`attention_client`: block ``k``'s mask beat from the keep
    selection (:mod:`hw.keep_select`), which takes one block at a time: ``(B + 1) W + 2``
    cycles a block (``W = ceil(N / lanes)`` score beats, ``B`` score bits), starting once the
    block's unit group has all its scores. The mask is taken as soon as it is valid (the
    attention engine's column list holds blocks ahead)."""
    W = _ceil(work.tokens, config.lanes)
    B = contract.predictor_score_format(work.head_dim).bits
    blocks = _attention_blocks(config, work)
    valid = {}

    def mask_ready(k):
        if k not in valid:
            blk = blocks[k]
            unit = events.get((name, "unit", blk["seq"], blk["head"], blk["block"] // config.rows))
            prev = 0 if k == 0 else mask_ready(k - 1)
            if unit is None or prev is None:
                return None
            start = max(unit + 2, prev + 1)
            valid[k] = start + (B + 1) * W + 1
        return valid[k]
    return mask_ready


# --- Entry points. ---------------------------------------------------------------------------


def linear_cycles(config, work):
    """The linear engine alone (``hw.run_through.LinearTop``), tokens at full rate."""
    events = {}
    sched = ArraySchedule(config, {"linear": linear_client(config, work, events)})
    busy, accs, _ = sched.run()
    cycles = events[("linear", "out", work.tokens - 1)] + LINEAR_TAIL
    return Result(cycles, busy, accs, events)


def _qkv_beats(config, work):
    """QKV beats of one token: channels ``[q | k | v]`` of ``heads x head_dim``, ``lanes`` a
    beat."""
    return _ceil(3 * work.heads * work.head_dim, config.lanes)


def attention_cycles(config, work):
    """The attention engine alone (``hw.run_through.AttentionTop``): QKV beats at full rate
    into two sequence slots, masks at full rate."""
    events = {}
    per_seq = work.tokens * _qkv_beats(config, work)
    fill = {}

    def seq_full(s):
        if s not in fill:
            prev = fill[s - 1] if s >= 1 else 0
            if s >= 2:
                rel = events.get(("attention", "release", s - 2))
                if rel is None:
                    return None
                prev = max(prev, rel + 1)
            fill[s] = prev + per_seq
        return fill[s]

    sched = ArraySchedule(config, {"attention": attention_client(config, work, events,
                                                                 seq_full=seq_full)})
    busy, accs, _ = sched.run()
    return Result(events[("attention", "done")], busy, accs, events)


def run_through_cycles(config, linear, attention):
    """The run-through (``hw.run_through.RunThrough``): the QKV projection ``linear``
    (``attention.sequences x tokens`` tokens) feeding ``attention`` on one array."""
    N = attention.tokens
    if linear.tokens != N * attention.sequences:
        raise ValueError("the projection must run sequences x tokens = {} tokens, not {}"
                         .format(N * attention.sequences, linear.tokens))
    events = {}

    def token_ready(t):
        s = t // N
        if s < 2:
            return 0
        rel = events.get(("attention", "release", s - 2))
        return None if rel is None else rel + 1

    def seq_full(s):
        out = events.get(("qkv", "out", (s + 1) * N - 1))
        return None if out is None else out + 1

    sched = ArraySchedule(config, {
        "qkv": linear_client(config, linear, events, name="qkv", token_ready=token_ready),
        "attention": attention_client(config, attention, events, seq_full=seq_full)})
    busy, accs, _ = sched.run()
    return Result(events[("attention", "done")], busy, accs, events)


#: The element-wise stages between two projections: GELU's table read and the packing into
#: token beats (hw.gelu, hw.to_tokens: a cycle each).
ELEMENTWISE = 2
#: A residual add's register (hw.residual).
RESIDUAL = 1
#: The transposing buffer: its first token beat three cycles after a sequence's last input
#: (hw.transpose).
TRANSPOSE = 3
#: From a sequence's last QKV beat leaving the projection to the predictor and the attention
#: engine holding it: the key report's register (hw.sta_report).
KEY_REPORT = 1
#: From the embedding's output to ``ln1``: the positional add and the source select
#: (hw.pos_add, hw.route: a cycle each).
EMBED_OUT = 2
#: The token buffer's first beat of a drain after START (hw.token_buffer).
BUFFER_START = 2
#: From the final LayerNorm's last element to the pooling unit having summed it (the head's
#: select and the packer).
POOL_IN = 2
#: From the last projection's last output to the block's DONE: the residual add, the
#: activation report and the counter (calibrated on ``make bench FULL=1``).
BLOCK_TAIL = 4


def layernorm_stats_cycles(config):
    """Cycles of LayerNorm's row statistics (:class:`hw.layernorm.RowStats`) from its input
    handshake to its output: one for the variance, the square root (two radicand bits a
    cycle), one, the division (a quotient bit a cycle)."""
    w = contract.layernorm_widths(config.max_d)
    return 1 + w["root"] + 1 + w["recip"]


class _LayerNormTiming:
    """When a :class:`hw.layernorm.LayerNorm` stage has each token ready: the writer takes one
    element a cycle into one of two row slots, the row statistics follow
    (:func:`hw.layernorm.stats_cycles`), the reader gives one element a cycle. ``arrival(t)``:
    ``(first, last)`` cycles of the token's first and last input beat (None while unknown);
    ``room(t)``: the cycle its input may start (a skip FIFO's room; None while unknown);
    ``taken(t)``: the cycle the next stage took the token's first word."""

    def __init__(self, config, d, arrival, room, taken):
        self.d, self.stats = d, layernorm_stats_cycles(config)
        self.word = config.bitmap_word
        self.arrival, self.room, self.taken = arrival, room, taken
        self.done = {}

    def writer_done(self, t):
        if t < 0:
            return 0
        if t not in self.done:
            arr, room = self.arrival(t), self.room(t)
            if arr is None or room is None:
                return None
            slot = 0
            if t >= 2:
                took = self.taken(t - 2)
                if took is None:
                    return None
                slot = took + self.d
            prev = self.writer_done(t - 1)
            if prev is None:
                return None
            first, last = arr
            self.done[t] = max(max(first, prev, slot, room) + self.d, last + 1)
        return self.done[t]

    def ready(self, t):
        """``(first, last)`` word of token ``t`` at the next stage's encoder."""
        done = self.writer_done(t)
        if done is None:
            return None
        first = done + self.stats + 8 + self.word - 1
        return first, first + self.d - self.word


def block_cycles(config, work, *, split=None):
    """One block (:class:`hw.block.Block`) on one array: the six PE clients (four projections,
    the predictor, attention) behind their result reserves, chained by the block's dataflow:
    LayerNorm before ``qkv`` and ``fc1``, the sequence gate and the attention skip before
    ``ln1``, the predictor's keep selection before attention, the transposing buffer before
    ``proj`` (a sequence's tokens once all of it is out of attention), GELU before ``fc2``,
    the MLP skip (``mlp_skip`` tokens between ``ln2`` and ``res2``).

    ``split``: ``(linear_rows, attention_rows)`` models a design with two arrays instead of
    one (the split-engine baseline): the projections on an array of ``linear_rows`` rows, the
    predictor and attention on one of ``attention_rows``, both of ``config``'s lanes."""
    return pass_cycles(config, work, split=split)


def pass_cycles(config, block=None, *, embed=None, head=None, pooled=None, split=None):
    """One pass of the whole model (:mod:`hw.model`): the tubelet embedding ``embed`` (a dense
    :class:`LinearWork`, pixels at full rate) before the block, or the block's tokens from the
    token buffer at full rate; the ``block`` (:class:`BlockWork`; None: a head pass on the
    buffer's ``pooled`` tokens); the head after it: the final LayerNorm over ``pooled`` tokens,
    mean pooling (a divider, a channel a cycle, after the last token) and the classifier
    ``head`` (a one-token :class:`LinearWork`). ``split``: see :func:`block_cycles`."""
    events = {}
    ev = events.get
    V, bw = config.lanes, config.bitmap_word
    # A split design runs the embedding, the projections and the head on the linear array.
    lin_cfg, att_cfg = (config, config) if split is None else \
        (config.replace(rows=r) for r in split)
    clients = {}
    source = None
    if embed is not None:
        words = embed.d_in // bw

        def pixels(t):
            first = t * embed.d_in // V + bw // V - 1
            return first, first + (words - 1) * bw // V

        clients["embed"] = linear_client(lin_cfg, embed, events, name="embed",
                                         token_ready=pixels)

        def source(t):
            first, last = ev(("embed", "first", t)), ev(("embed", "out", t))
            return None if last is None else (first + EMBED_OUT, last + EMBED_OUT)

    if block is not None:
        clients.update(_block_clients(config, block, events, source, lin_cfg, att_cfg))
        tokens = block.qkv.tokens
        d = block.qkv.d_in

        def tail(t):
            first, last = ev(("fc2", "first", t)), ev(("fc2", "out", t))
            return None if last is None else (first + RESIDUAL, last + RESIDUAL)
    else:
        tokens, d = pooled, head.d_in

        def tail(t):
            first = BUFFER_START + t * d // V
            return first, first + d // V - 1

    if head is not None:
        def norm_read(t):
            ready = norm.ready(t)
            return None if ready is None else ready[0] - bw + 1

        norm = _LayerNormTiming(config, d, tail, lambda t: 0, norm_read)

        def pooled_token(t):
            ready = norm.ready(pooled - 1)
            if ready is None:
                return None
            last_in = ready[1] + bw - 1 + POOL_IN
            return last_in + bw, last_in + d

        clients["head"] = linear_client(lin_cfg, head, events, name="head",
                                        token_ready=pooled_token)
    arrays = None if split is None else {
        n: ("attention", att_cfg) if n in ATTENTION_CLIENTS else ("linear", lin_cfg)
        for n in clients}
    busy, accs, _ = ArraySchedule(config, clients, arrays=arrays).run()
    if head is not None:
        end = events[("head", "out", 0)] + LINEAR_TAIL
    else:
        end = events[("fc2", "out", tokens - 1)] + BLOCK_TAIL
    return Result(end, busy, accs, events)


def _block_clients(config, work, events, source, lin_cfg, att_cfg):
    """The block's six clients (see :func:`block_cycles`), the projections on an array of
    ``lin_cfg``, the predictor and attention on one of ``att_cfg``; ``source(t)``: the
    ``(first, last)`` beat cycles of token ``t`` at ``ln1`` (None: the sequence gate's, a
    source at full rate)."""
    att = work.attention
    N = att.tokens
    d = work.qkv.d_in
    V, bw = config.lanes, config.bitmap_word
    ev = events.get
    skip_tokens = work.attention_skip * config.max_tokens

    def ln1_arrival(t):
        s = t // N
        if s < 2:
            return (0, 0) if source is None else source(t)
        rel = ev(("attention", "release", s - 2))
        if rel is None:
            return None
        if source is None:
            return rel + 1, rel + 1
        arr = source(t)
        return None if arr is None else (max(arr[0], rel + 1), max(arr[1], rel + 1))

    def ln1_room(t):
        if t < skip_tokens:
            return 0
        took = ev(("proj", "first", t - skip_tokens))
        return None if took is None else took + RESIDUAL

    ln1 = _LayerNormTiming(config, d, ln1_arrival, ln1_room, lambda t: ev(("qkv", "take", t)))

    def ln2_arrival(t):
        first, last = ev(("proj", "first", t)), ev(("proj", "out", t))
        return None if last is None else (first + RESIDUAL, last + RESIDUAL)

    def ln2_room(t):
        if t < work.mlp_skip:
            return 0
        took = ev(("fc2", "first", t - work.mlp_skip))
        return None if took is None else took + RESIDUAL

    ln2 = _LayerNormTiming(config, d, ln2_arrival, ln2_room, lambda t: ev(("fc1", "take", t)))
    transposed = {}

    def proj_ready(t):
        if t not in transposed:
            done = ev(("attention", "seq_done", t // N))
            prev = ev(("proj", "take", t - 1)) if t % N else 0
            if done is None or prev is None:
                return None
            transposed[t] = max(done + TRANSPOSE, prev + d // V)
        first = transposed[t] + bw // V - 1
        return first, first + d // V - bw // V

    def fc2_ready(t):
        first, last = ev(("fc1", "first", t)), ev(("fc1", "out", t))
        if last is None:
            return None
        return first + bw // V - 1 + ELEMENTWISE, last + ELEMENTWISE

    def seq_full(s):
        out = ev(("qkv", "out", (s + 1) * N - 1))
        return None if out is None else out + 1 + KEY_REPORT

    return {
        "qkv": linear_client(lin_cfg, work.qkv, events, name="qkv", token_ready=ln1.ready),
        "predict": (predictor_client(att_cfg, att, events, seq_full=seq_full)
                    if work.predict else iter(())),
        "attention": attention_client(
            att_cfg, att, events, seq_full=seq_full,
            mask_ready=keep_select_masks(att_cfg, att, events) if work.predict else None),
        "proj": linear_client(lin_cfg, work.proj, events, name="proj", token_ready=proj_ready),
        "fc1": linear_client(lin_cfg, work.fc1, events, name="fc1", token_ready=ln2.ready),
        "fc2": linear_client(lin_cfg, work.fc2, events, name="fc2", token_ready=fc2_ready),
    }



# --- The latency oracle: a model's blocks from their sparsity. --------------------------------


@dataclass(frozen=True)
class BlockSparsity:
    """What a block of a model computes, in the terms a sparsity search chooses:

    ``tokens`` entering the block (after token pruning), ``dense_tokens`` of them without a
    delta reference (run dense: the first frame, or tokens pruning revealed), ``sent[layer]``
    the fraction of its inputs a delta token sends for each of ``qkv``, ``proj``, ``fc1``,
    ``fc2`` (missing: 1, dense), ``dense_sent[layer]`` the fraction a dense token sends (its
    nonzero elements, :mod:`golden.macs`; missing: 1), ``rho`` the attention keep ratio (1:
    dense attention, no predictor), ``sequences`` the attention sequences the tokens form
    (``tokens`` a multiple of it)."""
    tokens: int
    sent: dict = field(default_factory=dict)
    dense_tokens: int = 0
    rho: float = 1.0
    sequences: int = 1
    dense_sent: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.tokens, int) or self.tokens < 1 or self.tokens % self.sequences:
            raise ValueError("tokens must be a positive multiple of sequences ({}), not {!r}"
                             .format(self.sequences, self.tokens))
        if not 0 <= self.dense_tokens <= self.tokens:
            raise ValueError("dense_tokens must be in 0 .. {}, not {!r}".format(
                self.tokens, self.dense_tokens))
        for what in ("sent", "dense_sent"):
            for name, f in getattr(self, what).items():
                if name not in PROJECTIONS or not 0 <= f <= 1:
                    raise ValueError("{} must map qkv, proj, fc1, fc2 to fractions in [0, 1], "
                                     "not {!r}: {!r}".format(what, name, f))
        if not 0 < self.rho <= 1:
            raise ValueError("rho must be in (0, 1], not {!r}".format(self.rho))


def block_work(config, sparsity, *, d, heads, mlp_ratio=4):
    """The :class:`BlockWork` of a block of width ``d`` with ``heads`` heads from its
    :class:`BlockSparsity`: every delta token of a layer sends ``round(sent x d_in)`` of its
    inputs, spread evenly over the bitmap words (the spread of the counts between tokens is
    not modelled), a dense token ``round(dense_sent x d_in)``; attention keeps ``keep_count(N, rho)``
    columns in every query block."""
    if d % heads or d % config.bitmap_word:
        raise ValueError("d ({!r}) must be a multiple of heads ({!r}) and of bitmap_word ({!r})"
                         .format(d, heads, config.bitmap_word))
    sp = sparsity
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, mlp_ratio * d),
              "fc2": (mlp_ratio * d, d)}
    layers = {}
    for name, (d_in, d_out) in shapes.items():
        n = round(sp.sent.get(name, 1.0) * d_in)
        nd = round(sp.dense_sent.get(name, 1.0) * d_in)
        counts = [nd] * sp.dense_tokens + [n] * (sp.tokens - sp.dense_tokens)
        layers[name] = LinearWork.from_counts(counts, d_in, d_out, config.bitmap_word)
    n = sp.tokens // sp.sequences
    keep = contract.keep_count(n, sp.rho)
    att = AttentionWork.uniform(n, heads, d // heads, config.lanes, keep, sp.sequences)
    return BlockWork(**layers, attention=att, predict=keep < n)


def model_cycles(config, blocks, *, d, heads, mlp_ratio=4, embed_in=None, classes=None,
                 split=None):
    """Cycles of a whole model, one pass per block (the array drains between passes, as
    :mod:`hw.model` runs it): ``blocks`` a sequence of :class:`BlockSparsity`; ``embed_in``
    the tubelet width (a dense embedding before block 0; None: none), ``classes`` the head's
    outputs (one pooled token, dense; None: none). ``split``: see :func:`block_cycles` (the
    embedding and the head then run on the linear array).

    Returns ``{"cycles", "blocks": [Result], "embed", "head", "busy", "macs"}``: the latency
    oracle of a sparsity search (the cycles of each block as its sparsity changes)."""
    out = {"blocks": [], "embed": 0, "head": 0, "busy": 0, "macs": 0}
    lin_cfg = config if split is None else config.replace(rows=split[0])
    for sp in blocks:
        work = block_work(config, sp, d=d, heads=heads, mlp_ratio=mlp_ratio)
        res = block_cycles(config, work, split=split)
        out["blocks"].append(res)
        out["busy"] += res.array_busy
        out["macs"] += block_macs(config, work)
    if embed_in is not None:
        work = LinearWork.dense(blocks[0].tokens, embed_in, d, config.bitmap_word)
        res = linear_cycles(lin_cfg, work)
        out["embed"], out["busy"] = res.cycles, out["busy"] + res.array_busy
        out["macs"] += ideal_linear_macs(work)
    if classes is not None:
        work = LinearWork.dense(1, d, classes, config.bitmap_word)
        res = linear_cycles(lin_cfg, work)
        out["head"], out["busy"] = res.cycles, out["busy"] + res.array_busy
        out["macs"] += ideal_linear_macs(work)
    out["cycles"] = sum(r.cycles for r in out["blocks"]) + out["embed"] + out["head"]
    return out


def block_macs(config, work):
    """Performed MACs of a block: the four projections, attention, and the predictor's
    ``ceil(N / lanes) x N x head_dim`` per head (when it runs; :mod:`golden.macs`)."""
    att = work.attention
    total = sum(ideal_linear_macs(w) for w in work.layers.values())
    total += ideal_attention_macs(att, config.lanes)
    if work.predict:
        total += att.sequences * att.heads * macs.predictor(
            _ceil(att.tokens, config.lanes), att.tokens, att.head_dim)
    return total
