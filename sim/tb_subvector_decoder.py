"""cocotb testbench: sub-vector mask decoder vs. the reference."""

import random

import cocotb

from golden.blocks import subvector_decode_reference
from hw.subvector_decoder import subvector_item_layout, subvector_mask_layout
from sim import stimulus
from sim.driver import settings_from_env
from sim.runner import config_from_env
from sim.scoreboard import check_equal
from sim.streams import StreamSink, StreamSource, start_clock_and_reset


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.4])
async def subvector_decoder_matches_reference(dut, stall):
    cfg = config_from_env()
    seed = settings_from_env()["seed"] + int(stall * 100)
    heads = stimulus.column_masks(cfg, random.Random(seed), heads=3, columns=12)
    want = subvector_decode_reference(cfg, heads)
    beats = [{"mask": mask, "last": int(j == len(cols) - 1)}
             for cols in heads for j, mask in enumerate(cols)]
    await start_clock_and_reset(dut)
    source = StreamSource(dut, "i", subvector_mask_layout(cfg), seed=seed, stall=stall)
    sink = StreamSink(dut, "o", subvector_item_layout(cfg), seed=seed + 1, stall=stall)
    cocotb.start_soon(source.send(beats))
    got = await sink.receive_until(lambda r: len(r) >= len(want))
    check_equal(got, want, what="work item", seed=seed)
    assert dut.error.value == 0
