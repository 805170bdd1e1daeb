"""Seeded random stimulus for the PE array, the sparse decoders and the engines' jobs.

Shared by the Amaranth unit tests, the cocotb testbenches and the soak (:mod:`sim.soak`), so
all feed the same kind of vectors to their backends (and the reference models in
:mod:`golden.blocks`).
"""

from golden import contract

__all__ = ["pe_beats", "delta_tokens", "column_masks", "bitmap_streams", "random_layer",
           "random_tokens", "random_sequence"]


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


def random_layer(rng, d_out, d_in, out_fmt=contract.ACT, *, shifts=(22, 27)):
    """A random integer linear layer (:class:`golden.intvidt.QLinear`) ``d_out x d_in``:
    narrow int8 weights, biases, multipliers in ``[2**14, 2**16)`` and shifts in ``shifts``
    (inclusive; the default suits a reduction of a few tens of int8 products)."""
    import torch
    from golden.intvidt import QLinear
    w = torch.tensor([[rng.randint(-127, 127) for _ in range(d_in)] for _ in range(d_out)])
    b = torch.tensor([rng.randint(-5000, 5000) for _ in range(d_out)])
    mult = torch.tensor([rng.randint(1 << 14, (1 << 16) - 1) for _ in range(d_out)])
    shift = torch.tensor([rng.randint(*shifts) for _ in range(d_out)])
    return QLinear(w, b, mult, shift, out_fmt)


def random_tokens(rng, n_t, n_s, d_in, change=0.3):
    """Frames of tokens that change a little from frame to frame (some elements zero):
    ``(x [n_t n_s, d_in], frame, spatial)``, frame-major."""
    import torch
    x = [[rng.choice([0, rng.randint(-128, 127)]) for _ in range(d_in)] for _ in range(n_s)]
    frames = [x]
    for _ in range(n_t - 1):
        frames.append([[max(-128, min(127, v + (rng.randint(-6, 6) if rng.random() < change
                                                else 0))) for v in tok] for tok in frames[-1]])
    x = torch.tensor([tok for f in frames for tok in f])
    i = torch.arange(n_t * n_s)
    return x, i // n_s, i % n_s


def random_sequence(rng, cfg, heads, n, *, density=0.5, empty_blocks=()):
    """Random int8 q, k, v and a sub-vector-shaped keep mask (``density``: kept columns;
    ``None``: dense) as a :class:`sim.attention_job.Sequence`."""
    import torch
    from sim.attention_job import Sequence
    hd = cfg.head_dim

    def t():
        return torch.tensor([[[rng.choice([rng.randint(-40, 40), rng.randint(-128, 127)])
                               for _ in range(hd)] for _ in range(n)] for _ in range(heads)])
    if density is None:
        return Sequence(t(), t(), t(), None)
    keep = torch.zeros(heads, n, n, dtype=torch.bool)
    V = cfg.lanes
    for h in range(heads):
        for b in range(-(-n // V)):
            if (h, b) in empty_blocks:
                continue
            cols = [j for j in range(n) if rng.random() < density] or [rng.randrange(n)]
            keep[h, b * V:(b + 1) * V, cols] = True
    return Sequence(t(), t(), t(), keep)
