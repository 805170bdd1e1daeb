"""Seeded random stimulus for the PE array and the sparse decoders.

Shared by the Amaranth unit tests and the cocotb testbenches, so both feed the same vectors
to their backends (and the reference models in :mod:`golden.blocks`).
"""

from golden import contract

__all__ = ["pe_beats", "delta_tokens", "column_masks", "bitmap_streams"]


def _operand(rng, fmt):
    # Edge values a quarter of the time, uniform otherwise.
    if rng.random() < 0.25:
        return rng.choice([fmt.min, fmt.max, 0, -1, 1])
    return rng.randint(fmt.min, fmt.max)


def pe_beats(config, rng, groups, *, max_len=6, routes=(0, 1, 2), bypass_prob=0.3):
    """Random accumulations: ``groups`` runs of 1..max_len beats, each closed by ``last``.

    Requantisation constants come from :func:`golden.contract.quantize_multiplier` of a scale
    that keeps most results inside int8, so rounding is exercised rather than saturation.
    """
    R, V = config.rows, config.lanes
    op = config.operand_format
    beats = []
    for g in range(groups):
        length = rng.randint(1, max_len)
        route = routes[g % len(routes)]             # every route and both output kinds
        scale = 1.0 / (rng.uniform(0.5, 2.0) * length * 256 * 64)
        mult, shift = contract.quantize_multiplier(scale)
        bypass = int(g % 4 == 1 or (g % 4 > 1 and rng.random() < bypass_prob))
        for i in range(length):
            full = (1 << V) - 1
            beats.append({
                "scalar": [_operand(rng, op) for _ in range(R)],
                "vector": [[_operand(rng, op) for _ in range(V)] for _ in range(R)],
                "mask": [rng.choice([full, full, 0, rng.randrange(1 << V)]) for _ in range(R)],
                "route": route, "clear": int(i == 0), "last": int(i == length - 1),
                "bypass": bypass, "mult": mult, "shift": shift,
            })
    return beats


def delta_tokens(rng, count, length, densities=(0.0, 0.05, 0.3, 1.0)):
    """Random delta tokens: ``count`` tokens of ``length`` int9 values, zeros where skipped."""
    fmt = contract.DELTA
    tokens = []
    for n in range(count):
        density = densities[n % len(densities)] if n < len(densities) else rng.random()
        token = []
        for _ in range(length):
            value = rng.choice([rng.randint(fmt.min, fmt.max), fmt.min, fmt.max])
            token.append((value or 1) if rng.random() < density else 0)
        tokens.append(token)
    return tokens


def bitmap_streams(config, tokens):
    """Concatenated bitmap and value beats of ``tokens`` (contract format)."""
    from golden.blocks import bitmap_token_streams
    maps, vals = [], []
    for token in tokens:
        m, v = bitmap_token_streams(config, token)
        maps += m
        vals += v
    return maps, vals


def column_masks(config, rng, heads, columns):
    """Per head, per column, a random kept-sub-vector bitmask over ``max_blocks`` blocks,
    including empty and full columns."""
    nb = config.max_blocks
    full = (1 << nb) - 1
    return [[rng.choice([0, full, rng.randrange(1 << nb), 1 << rng.randrange(nb),
                         rng.randrange(1 << nb) & rng.randrange(1 << nb)])
             for _ in range(columns)] for _ in range(heads)]
