"""The memory inventory lists what the design's components declare."""

from hw.block import PROJECTIONS
from hw.memories import memory_inventory, main
from tests.test_attention_engine import SMALL


def test_inventory_of_a_block():
    cfg = SMALL.replace(max_layers=2, name="small_l2")
    inv = {path: (w, d) for path, w, d in memory_inventory("block", cfg)}
    for p in PROJECTIONS:
        # One weight memory per row, max_layers parts of weight_depth / rows words of lanes
        # int8 weights each.
        for r in range(cfg.rows):
            assert inv["{}.weights_{}".format(p, r)] == (8 * cfg.lanes,
                                                         2 * cfg.weight_depth // cfg.rows)
    assert inv["gelu.table"] == (8, 2 * 256)
    assert inv["ln1.params"][1] == 2 * cfg.max_d // cfg.lanes


def test_cli_prints_the_total(capsys):
    assert main(["--design", "pe_array", "--preset", "tiny"]) == 0
    assert "pe_array on preset tiny" in capsys.readouterr().out
