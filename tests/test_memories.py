"""The memory inventory lists what the design's components declare."""

from hw.block import PROJECTIONS
from hw.linear_engine import engine_limits
from hw.memories import memory_inventory, main
from tests.test_attention_engine import SMALL


def test_inventory_of_a_block():
    cfg = SMALL.replace(max_layers=2, name="small_l2")
    inv = {path: (w, d) for path, w, d in memory_inventory("block", cfg)}
    d, mlp = cfg.max_d, cfg.mlp_ratio * cfg.max_d
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, mlp), "fc2": (mlp, d)}
    assert set(shapes) == set(PROJECTIONS)
    for p, (d_in, d_out) in shapes.items():
        # One weight memory per row, max_layers parts of what the layer's shape needs
        # (ceil(d_out / (rows lanes)) chunks of d_in words) of lanes int8 weights each; the
        # delta references of d_in int8 per position.
        words = min(cfg.weight_depth // cfg.rows, -(-d_out // (cfg.rows * cfg.lanes)) * d_in)
        assert engine_limits(cfg, d_in, d_out)[2] == words
        for r in range(cfg.rows):
            assert inv["{}.weights_{}".format(p, r)] == (8 * cfg.lanes, 2 * words), p
        assert inv[p + ".encoder.refs"] == (
            8 * cfg.bitmap_word, cfg.max_positions * d_in // cfg.bitmap_word), p
    assert inv["gelu.table"] == (8, 2 * 256)
    assert inv["ln1.params"][1] == 2 * cfg.max_d // cfg.lanes


def test_cli_prints_the_total(capsys):
    assert main(["--design", "pe_array", "--preset", "tiny"]) == 0
    assert "pe_array on preset tiny (max_layers 1)" in capsys.readouterr().out
    assert main(["--design", "linear_engine", "--preset", "tiny", "--max-layers", "3"]) == 0
    assert "linear_engine on preset tiny (max_layers 3)" in capsys.readouterr().out
