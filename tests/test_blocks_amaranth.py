"""PE array and sparse decoders under Amaranth's simulator, against the reference models."""

import random
import zlib

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from golden.blocks import (ROUTES, bitmap_decode_reference, pe_array_reference,
                           subvector_decode_reference)
from golden.contract import PERoute
from hw.bitmap_decoder import BitmapDecoder
from hw.bitpick import at_most, compact, pick_lowest
from hw.config import preset
from hw.pe_array import PEArray, Route
from hw.subvector_decoder import SubvectorDecoder
from sim import stimulus
from sim.amaranth_streams import StreamStalls, get_until, put_all
from sim.scoreboard import check_equal, tokens_from_pair_beats

SEED = 1234

CONFIGS = {
    "tiny": preset("tiny"),
    "r3v4q2": preset("tiny").replace(rows=3, lanes=4, requant_lanes=2, name="r3v4q2"),
    "default": preset("default"),
}


def run(dut, sources, sink, done, seed, *, stall=0.3, extra=None):
    """Drive ``sources`` [(port, payloads)], collect ``sink`` until ``done``; return beats."""
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for n, (port, payloads) in enumerate(sources):
        stalls = StreamStalls(seed + n, stall) if stall else None

        async def source(ctx, port=port, payloads=payloads, stalls=stalls):
            await put_all(ctx, port, payloads, stalls)
        sim.add_testbench(source)

    async def collect(ctx):
        got.extend(await get_until(ctx, sink, done, StreamStalls(seed + 99, stall)
                                   if stall else None, timeout=20_000))
        if extra is not None:
            await extra(ctx)
    sim.add_testbench(collect)
    sim.run()
    return got


def run_until_lasts(dut, sources, sink, lasts, seed):
    """:func:`run` until ``lasts`` beats with ``last`` have left; return (beats, ``error``
    then)."""
    errors = []

    async def check_error(ctx):
        errors.append(ctx.get(dut.error))
    got = run(dut, sources, sink, lambda r: sum(b["last"] for b in r) >= lasts, seed,
              extra=check_error)
    return got, errors[0]


def test_route_codes_are_the_contract_s():
    assert {r.name: r.value for r in Route} == {r.name: int(r) for r in PERoute} == ROUTES


@pytest.mark.parametrize("width,count,values", [
    *((w, c, range(1 << w)) for w in (1, 2, 3, 5, 8) for c in (1, 2, 3)),
    (98, 2, None), (512, 1, None),          # widths of the sub-vector decoder's masks
])
def test_pick_lowest_matches_a_scan(width, count, values):
    """The k lowest set bits, lowest first, 0 and absent past the last; the rest cleared."""
    if values is None:
        rng = random.Random(width)
        values = [0, (1 << width) - 1, 1 << (width - 1)] + [
            rng.getrandbits(width) & rng.getrandbits(width) & rng.getrandbits(width)
            for _ in range(40)]
    m = Module()
    bits, rest = Signal(width), Signal(width)
    index, present, remaining = pick_lowest(m, bits, count, name="p")
    flags = Signal(count)
    m.d.comb += [rest.eq(remaining), flags.eq(sum(p << j for j, p in enumerate(present)))]

    async def check(ctx):
        for v in values:
            ctx.set(bits, v)
            ones = [b for b in range(width) if v >> b & 1]
            got = [ctx.get(p) for p in index], ctx.get(flags), ctx.get(rest)
            want = ([ones[j] if j < len(ones) else 0 for j in range(count)],
                    (1 << min(count, len(ones))) - 1,
                    v & ~sum(1 << b for b in ones[:count]))
            assert got == want, (hex(v), got, want)
    sim = Simulator(m)
    sim.add_testbench(check)
    sim.run()


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 16])
def test_compact_packs_the_values_at_set_bits_lowest_first(width):
    """Slot c: the value of the c-th lowest set bit; zeros past the last; and the count of set
    bits. Every bitmap of up to 8 bits, and 16 bits (the delta encoder's word) at its edges
    and at random; the values are signed (int9) and include the extremes, so a lost sign bit
    or a merged pair shows."""
    rng = random.Random(SEED + width)
    maps = range(1 << width) if width <= 8 else [0, 0xFFFF, 0x8000, 0x0001, 0x5555, 0xAAAA] + [
        rng.getrandbits(16) for _ in range(200)]
    m = Module()
    bits = Signal(width)
    values = [Signal(signed(9), name=f"v{b}") for b in range(width)]
    slots, total = compact(m, bits, values, name="c")
    count = Signal(range(width + 1))
    m.d.comb += count.eq(total)

    async def check(ctx):
        for v in maps:
            vals = [rng.choice([-256, 255, -1, 0, 1, rng.randrange(-256, 256)])
                    for _ in range(width)]
            ctx.set(bits, v)
            for sig, x in zip(values, vals):
                ctx.set(sig, x)
            sent = [vals[b] for b in range(width) if v >> b & 1]
            want = sent + [0] * (width - len(sent))
            got = [ctx.get(s) for s in slots]
            assert got == want, (hex(v), vals, got, want)
            assert ctx.get(count) == len(sent), (hex(v), ctx.get(count), len(sent))
    sim = Simulator(m)
    sim.add_testbench(check)
    sim.run()


@pytest.mark.parametrize("width,values", [
    *((w, range(1 << w)) for w in (1, 2, 3, 5, 8)),
    (392, None),                            # the vidt sub-vector decoder's block-order mask
])
def test_at_most_counts_set_bits(width, values):
    """1 exactly when at most ``count`` bits are set (count 0 .. 3), at every bitmap of up to
    8 bits and at the edges of a 392-bit mask (one bit at either end, two far apart)."""
    if values is None:
        rng = random.Random(SEED + width)
        edges = [0, 1, 1 << 391, 1 | 1 << 391, 1 << 200 | 1 << 201, (1 << 392) - 1]
        values = edges + [sum(1 << rng.randrange(width) for _ in range(rng.randrange(1, 5)))
                          for _ in range(40)]
    m = Module()
    bits = Signal(width)
    flags = Signal(4)
    m.d.comb += flags.eq(sum(at_most(m, bits, c, name=f"c{c}") << c for c in range(4)))

    async def check(ctx):
        for v in values:
            ctx.set(bits, v)
            want = sum((bin(v).count("1") <= c) << c for c in range(4))
            assert ctx.get(flags) == want, (hex(v), ctx.get(flags), want)
    sim = Simulator(m)
    sim.add_testbench(check)
    sim.run()


def test_compact_wants_one_value_per_bit():
    with pytest.raises(ValueError, match="one entry per bit"):
        compact(Module(), Signal(4), [Signal(8)] * 3, name="c")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_pe_array_matches_reference(name, stall):
    cfg = CONFIGS[name]
    seed = SEED + zlib.crc32(name.encode()) % 1000 + int(stall * 10)
    beats = stimulus.pe_beats(cfg, random.Random(seed), groups=4 if name == "default" else 12)
    want = pe_array_reference(cfg, beats)
    dut = PEArray(cfg)
    got = run(dut, [(dut.i, beats)], dut.o, lambda r: len(r) >= len(want), seed, stall=stall)
    check_equal(got, want, what="PE array output row", seed=seed)
    assert any(not b["bypass"] for b in beats) and any(b["bypass"] for b in beats)
    assert len({b["route"] for b in beats}) > 1


def test_pe_array_overflow_flag_and_wrap():
    # max_reduction = 1 gives a 20-bit accumulator; 16 products of (-256)^2 overflow it.
    cfg = preset("tiny").replace(max_d=1, max_heads=1, mlp_ratio=1, max_tokens=1, lanes=2,
                                 requant_lanes=2)
    assert cfg.acc_format.bits == 20
    op = cfg.operand_format
    beats = [{"scalar": [op.min], "vector": [[op.min, 3]], "mask": [0b11], "route": 0,
              "clear": int(i == 0), "last": int(i == 15), "bypass": 1, "mult": 0, "shift": 0}
             for i in range(16)]
    beats += [dict(beats[0], last=1)]          # a fresh accumulation clears the flag
    want = pe_array_reference(cfg, beats)
    assert [w["overflow"] for w in want] == [True, False]
    assert want[0]["data"][0] == cfg.acc_format.wrap(16 * op.min * op.min)
    dut = PEArray(cfg)
    got = run(dut, [(dut.i, beats)], dut.o, lambda r: len(r) >= 2, SEED)
    check_equal(got, want, what="PE array output row", seed=SEED)


def test_pe_array_rejects_bad_operands():
    cfg = CONFIGS["tiny"]
    beat = stimulus.pe_beats(cfg, random.Random(0), 1, max_len=1)[0]
    beat["scalar"][0] = cfg.operand_format.max + 1
    with pytest.raises(ValueError, match="scalar operand"):
        pe_array_reference(cfg, [beat])


@pytest.mark.parametrize("name", ["tiny", "default"])
@pytest.mark.parametrize("length", [1, 16, 37, 64])
def test_bitmap_decoder_matches_reference(name, length):
    cfg = CONFIGS[name]
    seed = SEED + length
    tokens = stimulus.delta_tokens(random.Random(seed), 9, length)
    maps, vals = stimulus.bitmap_streams(cfg, tokens)
    dut = BitmapDecoder(cfg)
    errors = []

    async def check_error(ctx):
        errors.append(ctx.get(dut.error))
    got = run(dut, [(dut.i_map, maps), (dut.i_val, vals)], dut.o,
              lambda r: sum(b["last"] for b in r) >= len(tokens), seed, extra=check_error)
    check_equal(tokens_from_pair_beats(got, cfg.decode_width),
                bitmap_decode_reference(tokens), what="decoded token", seed=seed)
    assert errors == [0]
    # Up to k pairs per beat are really used: dense tokens fill whole beats.
    if length >= 16:
        assert max(b["count"] for b in got) == cfg.decode_width


MALFORMED = {
    # token 0 claims 5 nonzeros but sends values for 2 (one beat of k=2, marked last)
    "too_few_values": lambda cfg: ([{"word": 0b11111, "last": 1}],
                                   [{"values": [1, 2], "last": 1}]),
    # token 0 has 1 nonzero but sends two value beats
    "too_many_values": lambda cfg: ([{"word": 0b1, "last": 1}],
                                    [{"values": [1, 0], "last": 0}, {"values": [3, 4], "last": 1}]),
    # token 0 has more bitmap words than the longest configured reduction
    "token_too_long": lambda cfg: ([{"word": 1, "last": 0}] * (cfg.max_reduction // cfg.bitmap_word)
                                   + [{"word": 1, "last": 1}],
                                   [{"values": [5, 5], "last": 0}]
                                   * (cfg.max_reduction // cfg.bitmap_word // 2)
                                   + [{"values": [5, 0], "last": 1}]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_bitmap_decoder_flags_malformed_and_resyncs(case):
    cfg = CONFIGS["tiny"]
    bad_maps, bad_vals = MALFORMED[case](cfg)
    good = [[0, 7, 0, -3] + [0] * 12 + [9]]
    maps, vals = stimulus.bitmap_streams(cfg, good)
    dut = BitmapDecoder(cfg)
    got, error = run_until_lasts(dut, [(dut.i_map, bad_maps + maps), (dut.i_val, bad_vals + vals)],
                                 dut.o, 2, SEED)
    tokens = tokens_from_pair_beats(got, cfg.decode_width)
    assert error == 1
    # The malformed token is closed, and the next token decodes exactly.
    assert len(tokens) == 2 and tokens[1] == bitmap_decode_reference(good)[0]


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_subvector_decoder_matches_reference(name):
    cfg = CONFIGS[name]
    seed = SEED + 7
    heads = stimulus.column_masks(cfg, random.Random(seed), heads=3, columns=9)
    want = subvector_decode_reference(cfg, heads)
    beats = [{"mask": mask, "last": int(j == len(cols) - 1)}
             for cols in heads for j, mask in enumerate(cols)]
    dut = SubvectorDecoder(cfg)
    got = run(dut, [(dut.i, beats)], dut.o, lambda r: len(r) >= len(want), seed)
    check_equal(got, want, what="work item", seed=seed)
    assert any(w["empty"] for w in want) and sum(w["last"] for w in want) == 3


def test_subvector_decoder_block_order_matches_reference():
    """Block-major masks (the attention engine's format): a beat per query block, a bit per key
    column; empty, full and sparse blocks, several heads, random stalls."""
    cfg = CONFIGS["tiny"]
    seed = SEED + 8
    rng = random.Random(seed)
    full = (1 << cfg.max_tokens) - 1
    heads = [[rng.choice([0, full, rng.getrandbits(cfg.max_tokens),
                          1 << rng.randrange(cfg.max_tokens)]) for _ in range(5)]
             for _ in range(3)]
    want = subvector_decode_reference(cfg, heads, order="block")
    beats = [{"mask": mask, "last": int(b == len(blocks) - 1)}
             for blocks in heads for b, mask in enumerate(blocks)]
    dut = SubvectorDecoder(cfg, order="block")
    got = run(dut, [(dut.i, beats)], dut.o, lambda r: len(r) >= len(want), seed)
    check_equal(got, want, what="work item", seed=seed)
    assert sum(w["last"] for w in want) == 3 and [w["block"] for w in want[-2:]] == [4, 4]


def test_subvector_decoder_flags_too_many_blocks():
    cfg = preset("tiny").replace(max_tokens=16, name="t16")        # 2 row blocks per head
    beats = [{"mask": 1 << b, "last": int(b == 2)} for b in range(3)]
    dut = SubvectorDecoder(cfg, order="block")
    got, error = run_until_lasts(dut, [(dut.i, beats)], dut.o, 1, SEED)
    assert error == 1
    assert [(g["block"], g["column"], g["empty"], g["last"]) for g in got] == [
        (0, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 1)]


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_subvector_decoder_rejects_unknown_order():
    with pytest.raises(ValueError, match="Mask order must be one of column, block"):
        SubvectorDecoder(CONFIGS["tiny"], order="row")


def test_subvector_decoder_flags_too_many_columns():
    cfg = preset("tiny").replace(max_tokens=16, name="t16")        # 2 row blocks per column
    assert cfg.max_blocks == 2
    beats = [{"mask": 1, "last": int(j == 17)} for j in range(18)] + [{"mask": 3, "last": 1}]
    dut = SubvectorDecoder(cfg)
    got, error = run_until_lasts(dut, [(dut.i, beats)], dut.o, 2, SEED)
    assert error == 1
    # Columns 16 and 17 are dropped; the head is still closed, and the next head is intact.
    assert [(g["column"], g["block"], g["empty"]) for g in got] == (
        [(j, 0, 0) for j in range(16)] + [(15, 0, 1), (0, 0, 0), (0, 1, 0)])
    assert [g["last"] for g in got] == [0] * 16 + [1, 0, 1]
