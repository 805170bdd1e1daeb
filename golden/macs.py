"""One definition of the work a sparse VidT performs, shared by ``make eval`` and the benches.

Every figure of computation saved (``make eval``'s ideal saving, ``make bench``'s ideal cycles,
the cycle model's :func:`hw.cycles.block_macs`, a sparsity search's cost) counts work with the
functions below, so that a MAC means the same thing everywhere.

**Performed MACs** are what the PE array does, and only that:

* a token-wise linear layer performs ``sent x d_out`` MACs, ``sent`` being the elements the
  delta encoder passes to the array: the nonzero ``delta~`` elements of a delta token and the
  **nonzero** elements of a dense token (the encoder drops zeros of either kind, so the RTL
  never multiplies by zero; :func:`golden.export.linear_vectors` ``bitmap = delta != 0``). The
  dense baseline (a layer without delta, ``mode`` 0 in the RTL) sends every element;
* attention performs ``kept x head_dim`` MACs for ``Q K^T`` and as many for ``A V``, ``kept``
  being the computed score entries (lanes past ``N`` in a partial sub-vector do nothing);
* the embedding and the head are dense linear layers.

**Dense MACs**, the reference of every saving, are the dense integer model's: every element of
every token through every layer, the full ``N x N`` attention.

**Overheads** are counted as operations (one multiply-accumulate, add, compare, exponential
or division each: a deliberately pessimistic weight, an int8 compare costs far less than an
int8 MAC) and are added to the performed work of every point, each in its own column:

* ``predictor``: the sub-vector predictor's products (:mod:`golden.subvector`) and its keep
  selection (compares of the top-k or threshold);
* ``compare``: the delta encoder's subtract-and-compare, one per input element of every token a
  delta layer takes (dense tokens included: their zero test);
* ``sta``: STA's scoring (:func:`sta_stage_ops`), which runs in the host.

This module is plain Python (no torch): the cycle model imports it.
"""

from __future__ import annotations

import math

__all__ = ["OVERHEADS", "linear", "dense_linear", "attention", "dense_attention",
           "predictor", "delta_compares", "topk_compares", "sta_stage_ops"]

#: The overhead kinds, each its own report column.
OVERHEADS = ("predictor", "compare", "sta")


def linear(sent: int, d_out: int) -> int:
    """Performed MACs of a linear layer that passes ``sent`` input elements to the array."""
    return sent * d_out


def dense_linear(tokens: int, d_in: int, d_out: int) -> int:
    """MACs of a dense linear layer over ``tokens`` tokens (the reference)."""
    return tokens * d_in * d_out


def attention(kept: int, head_dim: int) -> int:
    """Performed MACs of attention: ``kept`` computed score entries (summed over heads and
    queries), each ``head_dim`` MACs in ``Q K^T`` and ``head_dim`` in ``A V``."""
    return 2 * kept * head_dim


def dense_attention(tokens: int, heads: int, head_dim: int) -> int:
    """MACs of dense attention over ``tokens`` tokens (the reference)."""
    return attention(heads * tokens * tokens, head_dim)


def predictor(query_units: int, key_units: int, width: int) -> int:
    """MACs of a predictor that scores ``query_units`` pooled queries against ``key_units``
    keys on ``width`` channels (one head)."""
    return query_units * key_units * width


def delta_compares(tokens: int, d_in: int) -> int:
    """The delta encoder's compares: one per input element of every token it takes."""
    return tokens * d_in


def _log2(n):
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


def topk_compares(rows: int, candidates: int) -> int:
    """Compares of choosing among ``candidates`` in each of ``rows`` rows (a sort network's
    ``n log2 n`` bound; a threshold test is cheaper and counted the same)."""
    return rows * candidates * _log2(candidates)


def sta_stage_ops(n_groups: int, group_size: int, kept: int, *, heads: int, head_dim: int,
                  dim: int) -> int:
    """Operations of one STA stage over one clip (:mod:`golden.sta`), ``n_groups`` groups of
    ``group_size`` tokens each keeping ``kept``:

    * the metric: the keys summed over heads, squared, normalised (``N (heads + 2) hd + N``);
    * the activation ``sum |x|`` and its min-max (``N d + 2 N``);
    * the first group's bipartite match: ``ceil(n/2) floor(n/2)`` cosines of ``hd`` MACs,
      their maxima, and a sort of the even tokens;
    * every later group: ``n m`` cosines of ``hd`` MACs against the ``m`` tokens carried
      (all ``n`` of the first group, then the ``kept`` of the previous one), and per pair an
      exponential, a column sum, a division and a weighted sum; the selection values, a sort,
      and the renormalisation of the carried scores.
    """
    n, tokens = group_size, n_groups * group_size
    ops = tokens * (heads + 2) * head_dim + tokens      # metric
    ops += tokens * dim + 2 * tokens                    # activation and min-max
    even, odd = (n + 1) // 2, n // 2
    ops += even * odd * (head_dim + 1) + even * _log2(even)
    for g in range(1, n_groups):
        m = n if g == 1 else kept
        ops += n * m * (head_dim + 4) + n + n * _log2(n) + 2 * kept
    return ops
