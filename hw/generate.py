"""``make verilog``: write the Verilog of every top-level block for every preset.

Output: ``build/verilog/<preset>/<block>.v`` plus ``summary.json`` (configuration, derived widths
and each module's ports), and a short table on stdout.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from hw.config import PRESETS, preset
from hw.designs import DESIGNS, write_verilog

__all__ = ["generate", "main", "DEFAULT_PRESETS"]

#: What ``make verilog`` generates without ``PRESET``: every preset but the cycle-model-scale
#: ``large`` one, whose sequence and reference buffers (about 90 Mbit of ``lib.memory``) take
#: Yosys about 20 minutes to write out; ``make verilog PRESET=large`` generates it.
DEFAULT_PRESETS = [name for name in PRESETS if name != "large"]

_PORT = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\\?\S+?);",
                   re.M)


def ports_of(verilog_text, module):
    """(direction, name, width) of the ports of ``module`` in ``verilog_text``."""
    start = verilog_text.index("module {}(".format(module))
    body = verilog_text[start:verilog_text.index("endmodule", start)]
    return [(d, name.lstrip("\\"), int(msb) + 1 if msb else 1)
            for d, msb, name in _PORT.findall(body)]


def generate(out_dir, names, designs=None):
    """Generate every design (or those in ``designs``) for every preset in ``names``; return
    the summary dict."""
    summary = {}
    for name in names:
        cfg = preset(name)
        entry = {"config": cfg.summary(), "modules": {}}
        for design in designs or DESIGNS:
            path = write_verilog(design, cfg, Path(out_dir) / name / (design + ".v"))
            ports = ports_of(path.read_text(), design)
            entry["modules"][design] = {
                "file": str(path), "bytes": path.stat().st_size,
                "ports": [{"dir": d, "name": n, "width": w} for d, n, w in ports],
            }
        (Path(out_dir) / name / "summary.json").write_text(json.dumps(entry, indent=2) + "\n")
        summary[name] = entry
    return summary


def print_summary(summary, file=sys.stdout):
    for name, entry in summary.items():
        c = entry["config"]
        print("preset {name}: {rows} rows x {lanes} lanes = {macs_per_cycle} MAC/cycle, "
              "int{operand_bits} operands, {acc_bits}-bit accumulators, "
              "{requant_lanes} requantiser(s), k={decode_width}, max d={max_d} N={max_tokens} "
              "heads={max_heads}".format(**c), file=file)
        for design, mod in entry["modules"].items():
            ports = ", ".join("{}{}[{}]".format("<" if p["dir"] == "input" else ">",
                                               p["name"], p["width"]) for p in mod["ports"])
            print("  {:<18} {:>9} B  {}".format(design, mod["bytes"], ports), file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/verilog", help="output directory")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="preset to generate (repeatable; default: {})"
                        .format(", ".join(DEFAULT_PRESETS)))
    args = parser.parse_args(argv)
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    summary = generate(args.out, args.preset or DEFAULT_PRESETS)
    print_summary(summary)
    print("wrote {}".format(args.out))


if __name__ == "__main__":
    main()
