"""cocotb testbench: bitmap decoder vs. the reference, including a malformed token."""

import random

import cocotb
from cocotb.triggers import FallingEdge

from golden.blocks import bitmap_decode_reference
from hw.bitmap_decoder import bitmap_map_layout, bitmap_pair_layout, bitmap_value_layout
from sim import stimulus
from sim.driver import settings_from_env
from sim.runner import config_from_env
from sim.scoreboard import check_equal, tokens_from_pair_beats
from sim.streams import StreamSink, StreamSource, start_clock_and_reset


async def decode(dut, cfg, maps, vals, tokens, seed, stall):
    await start_clock_and_reset(dut)
    src_map = StreamSource(dut, "i_map", bitmap_map_layout(cfg), seed=seed, stall=stall)
    src_val = StreamSource(dut, "i_val", bitmap_value_layout(cfg), seed=seed + 1, stall=stall)
    sink = StreamSink(dut, "o", bitmap_pair_layout(cfg), seed=seed + 2, stall=stall)
    cocotb.start_soon(src_map.send(maps))
    cocotb.start_soon(src_val.send(vals))
    beats = await sink.receive_until(lambda r: sum(b["last"] for b in r) >= tokens)
    await FallingEdge(dut.clk)
    return tokens_from_pair_beats(beats, cfg.decode_width)


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.4])
async def bitmap_decoder_matches_reference(dut, stall):
    cfg = config_from_env()
    seed = settings_from_env()["seed"] + int(stall * 100)
    rng = random.Random(seed)
    tokens = stimulus.delta_tokens(rng, 8, rng.choice([cfg.bitmap_word, cfg.max_d]))
    maps, vals = stimulus.bitmap_streams(cfg, tokens)
    got = await decode(dut, cfg, maps, vals, len(tokens), seed, stall)
    check_equal(got, bitmap_decode_reference(tokens), what="decoded token", seed=seed)
    assert dut.error.value == 0


@cocotb.test()
async def bitmap_decoder_flags_value_mismatch(dut):
    cfg = config_from_env()
    good = [[0, 7, 0, -3, 5]]
    maps, vals = stimulus.bitmap_streams(cfg, good)
    # Bitmap claims 5 nonzeros, the value stream closes after one beat.
    bad_maps = [{"word": 0b11111, "last": 1}]
    bad_vals = [{"values": [1] * cfg.decode_width, "last": 1}]
    if cfg.decode_width >= 5:
        bad_maps = [{"word": (1 << (cfg.decode_width + 1)) - 1, "last": 1}]
    got = await decode(dut, cfg, bad_maps + maps, bad_vals + vals, 2, seed=5, stall=0.3)
    assert dut.error.value == 1
    assert got[1] == bitmap_decode_reference(good)[0], got
