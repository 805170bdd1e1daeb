"""Co-simulation of the generated Verilog under Icarus Verilog and Verilator (cocotb).

The same stimulus generators and reference models as the Amaranth unit tests feed every
backend; each cocotb test asserts bit-exact equality. The ``default`` preset (the ECP5 build,
128 lanes) is marked slow: CI runs it, ``make test FAST=1`` skips it.
"""

import pytest

from hw.config import preset
from sim.runner import SIMULATORS, run_cocotb

TESTBENCHES = {
    "pe_array": "sim.tb_pe_array",
    "bitmap_decoder": "sim.tb_bitmap_decoder",
    "subvector_decoder": "sim.tb_subvector_decoder",
}

PRESETS = [pytest.param("tiny"), pytest.param("default", marks=pytest.mark.slow)]


@pytest.mark.cosim
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("design", TESTBENCHES)
def test_cosim(design, name, simulator):
    ran = run_cocotb(design, preset(name), simulator, TESTBENCHES[design], seed=7,
                     env={"RTSA_SEED": "7"})
    assert ran >= 2
