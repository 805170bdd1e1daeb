"""On-chip memory inventory of a generated top: what a design asks of an FPGA's block RAM.

::

    python -m hw.memories [--design model] [--preset vidt] [--top 12] [--max-layers N]

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

__all__ = ["BLOCK_RAMS", "absent_ports", "memory_inventory", "block_rams", "main"]

#: Block RAM of an FPGA family: the (width, depth) shapes one block can take, its capacity on the
#: boards' parts, and the memories a synthesis tool is expected to build in LUTs or flip-flops
#: instead (Yosys' memory_libmap): at most ``distributed_bits``, or at most ``distributed_depth``
#: words of any width (a FIFO of a few wide beats).
BLOCK_RAMS = {
    # DP16KD (18 kbit; 36 wide as PDPW16KD); the LFE5U-85F has 208.
    "ecp5": {"cell": "DP16KD", "available": 208, "distributed_bits": 1024, "distributed_depth": 16,
             "shapes": ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))},
    # SB_RAM40_4K (4 kbit); the iCE40UP5K has 30 (and four SPRAMs Yosys does not infer).
    "ice40": {"cell": "SB_RAM40_4K", "available": 30, "distributed_bits": 256,
              "distributed_depth": 0,
              "shapes": ((16, 256), (8, 512), (4, 1024), (2, 2048))},
}


def absent_ports(shape, depth, name):
    """Stand-ins for the read and write ports of a memory a component leaves out (a dense-only
    engine's delta references): ``(read, write)``, each with ``addr``, ``en`` and ``data``
    signals; reads give 0, writes go nowhere."""
    from types import SimpleNamespace
    from amaranth.hdl import Signal
    return tuple(SimpleNamespace(addr=Signal(range(depth), name=f"{name}_{k}addr"),
                                 en=Signal(name=f"{name}_{k}en"),
                                 data=Signal(shape, name=f"{name}_{k}data"))
                 for k in ("r", "w"))


def memory_inventory(design, config):
    """``[(path, width, depth)]`` of every memory of ``design`` (a name of
    :data:`hw.designs.DESIGNS`, built for ``config``, or a component)."""
    import warnings
    from amaranth.hdl import Fragment, Shape
    from amaranth.hdl._mem import MemoryInstance
    from amaranth.lib.memory import Memory
    from hw.designs import design_class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = design_class(design)(config) if isinstance(design, str) else design
        frag = Fragment.get(top, None)
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


def block_rams(inventory, family):
    """Block RAMs ``inventory`` (``[(path, width, depth)]``) needs on ``family`` (a key of
    :data:`BLOCK_RAMS`): ``[(path, blocks)]``, each memory in the block shape that takes
    fewest blocks, 0 for the memories small enough to be built in logic. An estimate of what
    synthesis does (it may pack two small memories into one block, or put a larger one in
    LUTs), but a design this says does not fit does not fit."""
    if family not in BLOCK_RAMS:
        raise ValueError("family must be one of {}, not {!r}".format(sorted(BLOCK_RAMS), family))
    spec = BLOCK_RAMS[family]
    out = []
    for path, width, depth in inventory:
        if width * depth <= spec["distributed_bits"] or depth <= spec["distributed_depth"]:
            out.append((path, 0))
        else:
            out.append((path, min(-(-width // w) * -(-depth // d) for w, d in spec["shapes"])))
    return out


def main(argv=None):
    from hw.config import preset
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design", default="model")
    ap.add_argument("--preset", default="vidt")
    ap.add_argument("--family", default="ecp5", choices=sorted(BLOCK_RAMS),
                    help="FPGA family whose block RAMs are counted")
    ap.add_argument("--top", type=int, default=12, help="rows to list")
    ap.add_argument("--max-layers", type=int, default=None,
                    help="blocks whose constants the stages hold (default: the preset's; 1 is "
                         "a board that streams each block's constants before its pass)")
    args = ap.parse_args(argv)
    config = preset(args.preset)
    if args.max_layers is not None:
        config = config.replace(max_layers=args.max_layers)
    inv = memory_inventory(args.design, config)
    blocks = dict(block_rams(inv, args.family))
    rows = defaultdict(lambda: [0, 0, 0, 0, 0])
    for path, width, depth in inv:
        key = re.sub(r"_\d+\b", "_*", path)
        r = rows[key]
        r[0] += 1
        r[1], r[2] = width, depth
        r[3] += width * depth
        r[4] += blocks[path]
    total = sum(r[3] for r in rows.values())
    spec = BLOCK_RAMS[args.family]
    used = sum(blocks.values())
    print("{} on preset {} (max_layers {}): {} memories, {:.2f} Mbit; {} {} of {} ({:.0%})"
          .format(args.design, args.preset, config.max_layers, len(inv), total / 1e6, used,
                  spec["cell"], spec["available"], used / spec["available"]))
    print("| memory | count | width | depth | kbit | share | {} |".format(spec["cell"]))
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, (n, w, d, bits, b) in sorted(rows.items(), key=lambda kv: -kv[1][3])[:args.top]:
        print("| `{}` | {} | {} | {} | {:.0f} | {:.1%} | {} |".format(key, n, w, d, bits / 1e3,
                                                                      bits / total, b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
