"""cocotb testbench: PE array vs. the reference model, with random stalls on both sides."""

import os
import random

import cocotb

from golden.blocks import pe_array_reference
from hw.pe_array import pe_input_layout, pe_output_layout
from sim import stimulus
from sim.driver import settings_from_env
from sim.runner import config_from_env
from sim.scoreboard import check_equal
from sim.streams import StreamSink, StreamSource, start_clock_and_reset


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.4])
async def pe_array_matches_reference(dut, stall):
    cfg = config_from_env()
    seed = settings_from_env()["seed"] + int(stall * 100)
    beats = stimulus.pe_beats(cfg, random.Random(seed), groups=int(os.environ.get("RTSA_GROUPS", "6")))
    want = pe_array_reference(cfg, beats)
    await start_clock_and_reset(dut)
    source = StreamSource(dut, "i", pe_input_layout(cfg), seed=seed, stall=stall)
    sink = StreamSink(dut, "o", pe_output_layout(cfg), seed=seed + 1, stall=stall)
    cocotb.start_soon(source.send(beats))
    got = await sink.receive_until(lambda r: len(r) >= len(want))
    check_equal(got, want, what="PE array output row", seed=seed)
    assert source.sent == len(beats)
