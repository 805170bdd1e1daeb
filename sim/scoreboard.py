"""Scoreboards: turn output beats into transactions and assert bit-exact equality.

Used by the Amaranth unit tests and the cocotb testbenches alike. A mismatch raises
:exc:`AssertionError` naming the first differing transaction and the stimulus seed.
"""

__all__ = ["check_equal", "check_run", "tokens_from_pair_beats", "first_difference",
           "count_values"]


def check_equal(got, want, *, what, seed):
    """Assert ``got == want`` (lists of transactions), exactly."""
    for n, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise AssertionError("{} #{} differs (seed {}):\n  got  {!r}\n  want {!r}"
                                 .format(what, n, seed, g, w))
    if len(got) != len(want):
        raise AssertionError("{}: got {} transactions, want {} (seed {})"
                             .format(what, len(got), len(want), seed))


def _leaves(value, path=()):
    """``(path, int)`` of every integer in a transaction (dicts and lists of ints)."""
    if isinstance(value, dict):
        for key in value:
            yield from _leaves(value[key], path + (key,))
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            yield from _leaves(item, path + (n,))
    else:
        yield path, value


def count_values(transactions, field="data"):
    """The integers in ``field`` of every transaction: the output elements a comparison of
    them checks."""
    return sum(1 for t in transactions for _ in _leaves(t[field]))


def first_difference(got, want):
    """``None`` when ``got == want`` (lists of transactions), else where they first differ:
    ``{"transaction", "field", "got", "want"}`` (``field`` the path to the first differing
    integer, e.g. ``"data[3]"``; for a missing or extra transaction ``"count"``)."""
    for n, (g, w) in enumerate(zip(got, want)):
        if g != w:
            found = dict(_leaves(g))
            for path, wv in _leaves(w):
                gv = found.get(path, "missing")
                if gv != wv:
                    break
            else:
                path, gv, wv = (), g, w             # a different shape of transaction
            name = "".join("[{}]".format(p) if isinstance(p, int) else "." + p for p in path)
            return {"transaction": n, "field": name.lstrip("."), "got": gv, "want": wv}
    if len(got) != len(want):
        return {"transaction": min(len(got), len(want)), "field": "count", "got": len(got),
                "want": len(want)}
    return None


def check_run(res, want, seed, registers, *, what, errors=()):
    """A token-counted run of a stage with registers ``registers``
    (:class:`hw.engine.EngineRegisters`): exact beats ``res["beats"]``, STATUS
    ``res["status"]`` DONE with exactly the named error bits, ``res["tokens_out"]`` = the
    tokens of ``want``."""
    check_equal(res["beats"], want, what=what, seed=seed)
    st = res["status"]
    assert st.done and not st.running, "seed {}: {} status {}".format(
        seed, what, registers.describe(st.as_value().value))
    got_errors = {e for e in registers.errors if st.errors[e]}
    assert got_errors == set(errors), "seed {}: {} errors {}, want {}".format(
        seed, what, sorted(got_errors), sorted(errors))
    assert res["tokens_out"] == sum(b["last"] for b in want), (seed, what, res["tokens_out"])


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
