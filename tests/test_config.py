"""Generator configuration: presets, derived widths, validation, and `make verilog` output."""

import json

import pytest

from golden import contract
from hw import arith, designs
from hw.config import PRESETS, RTSAConfig, preset
from hw.generate import generate
from sim import runner


def test_presets_and_derived_widths():
    assert set(PRESETS) >= {"tiny", "default", "large"}
    tiny, default = preset("tiny"), preset("default")
    assert tiny.rows * tiny.lanes == 8                      # the UP5K's 8 SB_MAC16
    assert default.rows * default.lanes + 2 * default.requant_lanes <= 156   # ECP5-85F MULT18X18D
    for cfg in PRESETS.values():
        # The accumulator holds the worst delta projection of the longest reduction.
        worst = contract.linear_reduction_terms(cfg.max_reduction) * contract.PE_OPERAND.min ** 2
        assert cfg.acc_format.contains(worst)
        assert not contract.IntFormat(cfg.acc_format.bits - 2).contains(worst)
        assert 2 ** cfg.index_bits >= cfg.max_reduction
        assert cfg.max_blocks * cfg.lanes >= cfg.max_tokens
    assert preset("tiny").acc_format.bits == 28


def test_width_helpers():
    assert [contract.bits_for(n) for n in (1, 2, 3, 4, 5, 512, 513)] == [1, 1, 2, 2, 3, 9, 10]
    assert [contract.log2_exact(n) for n in (1, 2, 16, 1 << 40)] == [0, 1, 4, 40]
    assert arith.bits_for is contract.bits_for and arith.log2_exact is contract.log2_exact
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="bits_for needs a positive integer count"):
            contract.bits_for(bad)
    for bad in (0, 3, 12, 2.0, True):
        with pytest.raises(ValueError, match="log2_exact needs a positive power of two"):
            contract.log2_exact(bad)
    cfg = preset("large")
    assert (cfg.index_bits, cfg.block_bits, cfg.column_bits, cfg.position_bits) == (12, 7, 11, 8)


def test_designs_live_with_the_hardware():
    assert runner.DESIGNS is designs.DESIGNS and runner.design_class is designs.design_class
    assert designs.design_class("bitmap_decoder").__name__ == "BitmapDecoder"
    with pytest.raises(ValueError, match="Unknown design 'cpu'; choose one of pe_array"):
        designs.design_class("cpu")


@pytest.mark.parametrize("changes,message", [
    (dict(lanes=0), "lanes must be a positive integer"),
    (dict(lanes=6), "lanes must be a power of two"),
    (dict(rows=-1), "rows must be a positive integer"),
    (dict(rows=2.0), "rows must be a positive integer"),
    (dict(requant_lanes=3), "requant_lanes .* must divide lanes"),
    (dict(decode_width=32), "decode_width .* cannot exceed bitmap_word"),
    (dict(bitmap_word=12), "bitmap_word must be a power of two"),
    (dict(max_heads=5), "max_heads .* must divide max_d"),
    (dict(max_d=1 << 26, max_heads=1), "Accumulators of .* bits are too wide"),
])
def test_invalid_configuration_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny").replace(**changes)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        preset("huge")


def test_generate_writes_verilog_and_summary(tmp_path):
    # The block and model tops take a minute to convert; their Verilog is what the
    # co-simulations build (tests/test_cosim_block.py, tests/test_cosim_model.py).
    summary = generate(tmp_path, ["tiny"], designs=["pe_array", "bitmap_decoder",
                                                    "subvector_decoder", "softmax_unit"])
    entry = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert entry == json.loads(json.dumps(summary["tiny"]))
    for block in ("pe_array", "bitmap_decoder", "subvector_decoder"):
        text = (tmp_path / "tiny" / (block + ".v")).read_text()
        assert "module {}(".format(block) in text
        ports = {p["name"]: p for p in entry["modules"][block]["ports"]}
        assert {"clk", "rst"} <= set(ports)
    from hw.pe_array import pe_input_layout
    ports = {p["name"]: p for p in entry["modules"]["pe_array"]["ports"]}
    assert ports["i__payload"]["width"] == pe_input_layout(preset("tiny")).size
    assert RTSAConfig(**{k: entry["config"][k] for k in ("lanes", "rows")}).lanes == 8
