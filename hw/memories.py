"""On-chip memory inventory of a generated top: what a design asks of an FPGA's block RAM.

::

    python -m hw.memories [--design model] [--preset vidt] [--top 12]

Elaborates the design (no synthesis) and lists every :class:`amaranth.lib.memory.Memory`
(including FIFO storage) with its width, depth and bits, largest first, grouped by the place
in the hierarchy with the instance index dropped (``qkv.weights_0`` ... ``qkv.weights_7`` are
one row: ``qkv.weights_*``), and the total. A synthesis tool maps these onto block RAM
(ECP5 DP16KD: 18 kbit each; the ECP5-85F has 208 = 3.74 Mbit) or onto LUTs; its packing can
only add to the bits listed (a 29-bit word takes two 18-bit-wide DP16KD columns).
"""

import argparse
import re
import sys
from collections import defaultdict

__all__ = ["memory_inventory", "main"]


def memory_inventory(design, config):
    """``[(path, width, depth)]`` of every memory of ``design`` (a name of
    :data:`hw.designs.DESIGNS`) for ``config``."""
    import warnings
    from amaranth.hdl import Fragment, Shape
    from amaranth.hdl._mem import MemoryInstance
    from amaranth.lib.memory import Memory
    from hw.designs import design_class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frag = Fragment.get(design_class(design)(config), None)
    out = []

    def walk(fr, path):
        for sub, name, *_ in fr.subfragments:
            p = "{}.{}".format(path, name) if path else str(name)
            if isinstance(sub, MemoryInstance):
                mem = next((o for o in sub.origins if isinstance(o, Memory)), None)
                if mem is not None:
                    out.append((p, Shape.cast(mem.shape).width, mem.depth))
                    continue
            walk(sub, p)
    walk(frag, "")
    return out


def main(argv=None):
    from hw.config import preset
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design", default="model")
    ap.add_argument("--preset", default="vidt")
    ap.add_argument("--top", type=int, default=12, help="rows to list")
    args = ap.parse_args(argv)
    inv = memory_inventory(args.design, preset(args.preset))
    rows = defaultdict(lambda: [0, 0, 0, 0])
    for path, width, depth in inv:
        key = re.sub(r"_\d+\b", "_*", path)
        r = rows[key]
        r[0] += 1
        r[1], r[2] = width, depth
        r[3] += width * depth
    total = sum(r[3] for r in rows.values())
    print("{} on preset {}: {} memories, {:.2f} Mbit".format(args.design, args.preset, len(inv),
                                                             total / 1e6))
    print("| memory | count | width | depth | kbit | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, (n, w, d, bits) in sorted(rows.items(), key=lambda kv: -kv[1][3])[:args.top]:
        print("| `{}` | {} | {} | {} | {:.0f} | {:.1%} |".format(key, n, w, d, bits / 1e3,
                                                                 bits / total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
