"""Scoreboards: turn output beats into transactions and assert bit-exact equality.

Used by the Amaranth unit tests and the cocotb testbenches alike. A mismatch raises
:exc:`AssertionError` naming the first differing transaction and the stimulus seed.
"""

__all__ = ["check_equal", "tokens_from_pair_beats"]


def check_equal(got, want, *, what, seed):
    """Assert ``got == want`` (lists of transactions), exactly."""
    for n, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise AssertionError("{} #{} differs (seed {}):\n  got  {!r}\n  want {!r}"
                                 .format(what, n, seed, g, w))
    if len(got) != len(want):
        raise AssertionError("{}: got {} transactions, want {} (seed {})"
                             .format(what, len(got), len(want), seed))


def tokens_from_pair_beats(beats, k):
    """Group bitmap decoder output beats into per-token (index, value) lists.

    Also checks the beat format: ``count <= k`` and entries beyond ``count`` unused.
    """
    tokens, current = [], []
    for beat in beats:
        count = beat["count"]
        if not 0 <= count <= k:
            raise AssertionError("Beat count {} outside 0..{}: {!r}".format(count, k, beat))
        current += [(beat["index"][j], beat["value"][j]) for j in range(count)]
        if beat["last"]:
            tokens.append(current)
            current = []
    if current:
        raise AssertionError("Pairs after the last token boundary: {!r}".format(current))
    return tokens
