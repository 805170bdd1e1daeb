"""Print a counterexample: the values of chosen signals of a SymbiYosys trace, step by step.

    python -m sim.formal.trace build/formal/<component>/<check>/run/engine_0/trace.vcd \\
        [SUBSTRING ...]

Signals whose hierarchical name contains one of the substrings are shown (all top-level ones
without a substring), one column a signal, one row a step.
"""

import sys

__all__ = ["read_vcd", "main"]


def read_vcd(path):
    """``({code: name}, [{code: value} per step])`` of a VCD file written by smtbmc (values as
    ints, ``x`` as ``None``): one sample a solver step (its ``smt_step`` counter), the last
    one being the state after the failing step."""
    names, scope, samples, cur, t = {}, [], [], {}, None
    for line in open(path):
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "$scope":
            scope.append(tok[2])
        elif tok[0] == "$upscope":
            scope.pop()
        elif tok[0] == "$var":
            names.setdefault(tok[3], ".".join(scope[1:] + [tok[4]]))
        elif tok[0].startswith("#"):
            if t is not None:
                samples.append(dict(cur))
            t = int(tok[0][1:])
        elif tok[0][0] in "01xz" and len(tok) == 1:
            cur[tok[0][1:]] = None if tok[0][0] in "xz" else int(tok[0][0])
        elif tok[0][0] == "b":
            bits = tok[0][1:]
            cur[tok[1]] = None if set(bits) & set("xz") else int(bits, 2)
    samples.append(dict(cur))
    step = next((c for c, n in names.items() if n == "smt_step"), None)
    steps, seen = [], set()
    for sample in samples:
        key = sample.get(step, len(steps))
        if key not in seen:
            seen.add(key)
            steps.append(sample)
    return names, steps


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    names, steps = read_vcd(argv[0])
    want = argv[1:]
    cols = sorted((n, c) for c, n in names.items()
                  if (any(w in n for w in want) if want else "." not in n))
    width = max([len(n) for n, _ in cols] + [4])
    print("{:>{w}} ".format("step", w=width) + " ".join("{:>6d}".format(s)
                                                      for s in range(len(steps))))
    for n, c in cols:
        print("{:>{w}} ".format(n, w=width) + " ".join(
            "{:>6}".format("x" if s.get(c) is None else s[c]) for s in steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
