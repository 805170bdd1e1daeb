"""Where a board build fails timing: every register's logic depth, not just the worst path.

::

    python -m boards.timing build/ulx3s [--mhz 75] [--top 15]

nextpnr reports one critical path a clock; a design that misses its clock by a factor of three
fails at thousands of endpoints (its slack histogram), and fixing the worst path alone moves
Fmax little. This reads the synthesised netlist of a build (``top.json``, Yosys' ECP5 cells) and
estimates, for every endpoint (a flip-flop's data, enable or reset, a block RAM's or LUT RAM's
write inputs), the latest arrival of its inputs from any launching register, block RAM output
or pin, with a fixed delay per cell and per net (:data:`ECP5_DELAYS`, calibrated so that the
worst path of the ULX3S run-through build comes out near nextpnr's placed-and-routed figure).
It then groups the endpoints that miss ``--mhz`` by the component they belong to (the first
``--depth`` levels of their hierarchical name) and prints, per component, how many miss, the
worst estimate and that path's cells.

An estimate: no placement, so every net costs the same; what it is good for is the ranking
(which components hold the most and the longest paths), which nextpnr's single path does not
give. The figure to quote is nextpnr's (``report.json``).
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["ECP5_DELAYS", "arrivals", "by_component", "summary", "main"]

#: Nanoseconds. ``route`` is one general net (a placed design's average hop, ECP5 -6: nextpnr
#: puts 60-75 % of a congested path in routing); carry chains and the slice-internal mux inputs
#: are dedicated wires and cost nothing. Block RAM clock-to-out without its output register
#: (nextpnr's DP16KD timing: 5.8 ns on the ULX3S build's critical path).
ECP5_DELAYS = {
    "route": 0.85, "clk_to_q": 0.45, "setup": 0.1,
    "LUT4": 0.25, "PFUMX": 0.2, "L6MUX21": 0.2,
    "CCU2C_in": 0.45, "CCU2C_carry": 0.05, "CCU2C_sum": 0.3,
    "DP16KD_out": 5.8, "DPR16X4_read": 0.6, "MULT18X18D": 4.5,
}

#: Inputs reached by dedicated wires (no routing delay).
_DEDICATED = {("CCU2C", "CIN"), ("PFUMX", "ALUT"), ("PFUMX", "BLUT"), ("L6MUX21", "D0"),
              ("L6MUX21", "D1")}


def _comb_delay(cell_type, src_port, dst_port, delays):
    """Delay through a combinational cell from input ``src_port`` to output ``dst_port``, or
    None when the output does not depend on it."""
    if cell_type == "LUT4":
        return delays["LUT4"]
    if cell_type in ("PFUMX", "L6MUX21"):
        return delays[cell_type]
    if cell_type == "CCU2C":
        if src_port == "CIN":
            return delays["CCU2C_carry"] if dst_port == "COUT" else delays["CCU2C_sum"]
        # An operand of bit 1 does not reach S0.
        if dst_port == "S0" and src_port.endswith("1"):
            return None
        return delays["CCU2C_in"]
    if cell_type == "TRELLIS_DPR16X4":
        return delays["DPR16X4_read"] if src_port.startswith("RAD") else None
    if cell_type == "MULT18X18D":
        return delays["MULT18X18D"] if src_port[:1] in "AB" and src_port[1:].isdigit() \
            else None
    return None


def _endpoint_port(cell_type, port):
    """A port where a path ends (a register's or a memory's synchronous input)."""
    if cell_type == "TRELLIS_FF":
        return port in ("DI", "M", "CE", "LSR")
    if cell_type == "DP16KD":
        return not port.startswith("DO") and port not in ("CLKA", "CLKB")
    if cell_type == "TRELLIS_DPR16X4":
        return port.startswith(("WAD", "DI", "WRE"))
    return False


def _name(cell_name):
    from boards.build import _net_origin
    return _net_origin(cell_name) or cell_name


def arrivals(netlist, delays=ECP5_DELAYS):
    """``[(arrival_ns, endpoint_name, path)]`` of every endpoint of the top module of
    ``netlist`` (a Yosys JSON netlist, parsed), latest first; ``path`` is the names of the
    cells on its slowest input cone, launching cell first."""
    module = next(m for m in netlist["modules"].values()
                  if m.get("attributes", {}).get("top"))
    cells = module["cells"]
    driver = {}                                     # bit -> (cell, port)
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            if cell["port_directions"].get(port) == "output":
                for b in bits:
                    driver[b] = (name, port)
    memo = {}

    def arrival(bit):
        """Latest arrival at the output net ``bit`` and the cell that set it."""
        if isinstance(bit, str):                    # a constant
            return 0.0, None
        if bit in memo:
            return memo[bit]
        memo[bit] = (0.0, None)                     # combinational loops end here
        src = driver.get(bit)
        if src is None:
            result = (0.0, None)
        else:
            name, port = src
            cell = cells[name]
            t = cell["type"]
            if t == "TRELLIS_FF":
                result = (delays["clk_to_q"], None)
            elif t == "DP16KD":
                result = (delays["DP16KD_out"], None)
            else:
                best, via = 0.0, None
                for in_port, bits in cell["connections"].items():
                    if cell["port_directions"].get(in_port) != "input":
                        continue
                    d = _comb_delay(t, in_port, port, delays)
                    if d is None:
                        continue
                    wire = 0.0 if (t, in_port) in _DEDICATED else delays["route"]
                    for b in bits:
                        a, _ = arrival(b)
                        if a + wire + d > best:
                            best, via = a + wire + d, b
                result = (best, via)
        memo[bit] = result
        return result

    def trace(bit):
        names = []
        while bit is not None and not isinstance(bit, str):
            src = driver.get(bit)
            if src is None:
                break
            names.append(_name(src[0]))
            bit = memo.get(bit, (0.0, None))[1]
        out = []
        for n in reversed(names):
            if not out or out[-1] != n:
                out.append(n)
        return out

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 200_000))
    out = []
    for name, cell in cells.items():
        t = cell["type"]
        worst, via = None, None
        for port, bits in cell["connections"].items():
            if cell["port_directions"].get(port) != "input" or not _endpoint_port(t, port):
                continue
            for b in bits:
                a, _ = arrival(b)
                a += delays["route"] + delays["setup"]
                if worst is None or a > worst:
                    worst, via = a, b
        if worst is not None:
            out.append((round(worst, 2), _name(name), trace(via)))
    out.sort(key=lambda e: -e[0])
    return out


def by_component(endpoints, period_ns, depth=3):
    """The endpoints later than ``period_ns``, grouped by the first ``depth`` levels of their
    name: ``[(component, failing, worst_ns, worst_path)]``, most failing first."""
    groups = defaultdict(lambda: [0, 0.0, None])
    for ns, name, path in endpoints:
        if ns <= period_ns:
            continue
        key = ".".join(name.split(".")[:depth])
        g = groups[key]
        g[0] += 1
        if ns > g[1]:
            g[1], g[2] = ns, path
    return sorted(((k, n, w, p) for k, (n, w, p) in groups.items()), key=lambda r: (-r[1], -r[2]))


def summary(netlist, mhz, *, depth=3, rows=None):
    """The estimate of ``netlist`` (a parsed Yosys JSON netlist) against ``mhz``: ``{"mhz",
    "endpoints", "late", "worst_ns", "components"}``, the components (:func:`by_component`,
    the first ``rows`` of them, all by default) as ``{"component", "late", "worst_ns",
    "path"}``."""
    endpoints = arrivals(netlist)
    late = by_component(endpoints, 1e3 / mhz, depth)
    return {"mhz": mhz, "endpoints": len(endpoints), "late": sum(r[1] for r in late),
            "worst_ns": endpoints[0][0] if endpoints else 0.0,
            "components": [dict(component=k, late=n, worst_ns=w, path=p)
                           for k, n, w, p in late[:rows]]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path, help="a build directory (with top.json) or the file")
    ap.add_argument("--mhz", type=float, default=75.0, help="the clock to check against")
    ap.add_argument("--depth", type=int, default=3, help="name levels that make a component")
    ap.add_argument("--top", type=int, default=15, help="components to list")
    ap.add_argument("--json", type=Path, help="write the table here too")
    args = ap.parse_args(argv)
    path = args.build / "top.json" if args.build.is_dir() else args.build
    est = summary(json.loads(path.read_text()), args.mhz, depth=args.depth)
    print("{}: {} endpoints, {} later than {:.2f} ns ({:g} MHz) by this estimate; the worst "
          "{:.1f} ns ({:.1f} MHz)".format(path, est["endpoints"], est["late"], 1e3 / args.mhz,
                                          args.mhz, est["worst_ns"], 1e3 / est["worst_ns"]))
    print("| component | endpoints late | worst ns | its path (launch ... capture) |")
    print("|---|--:|--:|---|")
    for c in est["components"][:args.top]:
        p = c["path"]
        shown = p if len(p) <= 6 else p[:3] + ["..."] + p[-3:]
        print("| `{}` | {} | {:.1f} | {} |".format(c["component"], c["late"], c["worst_ns"],
                                                   " → ".join(shown)))
    if args.json:
        args.json.write_text(json.dumps(est, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
