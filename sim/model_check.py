"""The cycle model (:mod:`hw.cycles`) against the RTL, as the benches report it.

Every bench entry carries the measured ``cycles`` (the engine's counter under Verilator) and
the model's ``predicted_cycles`` for the same job (computed by the testbench from the job's
workload, :attr:`sim.linear_job.LinearJob.work` and friends). :func:`model_table` turns them
into the report's table; a bench exits non-zero when any entry misses
:data:`hw.cycles.TOLERANCE`.
"""

from hw.cycles import TOLERANCE

__all__ = ["model_error", "model_table"]


def model_error(measured, predicted):
    """Relative error of a prediction: ``(predicted - measured) / measured``."""
    return (predicted - measured) / measured


def model_table(entries, title="Cycle model against the RTL"):
    """``entries``: ``(label, measured, predicted)``. Returns the Markdown lines and whether
    every entry is within :data:`TOLERANCE`."""
    lines = ["## " + title, "",
             "`hw.cycles` predicts each run from its workload alone (elements sent per token "
             "and bitmap word, kept columns per query block); measured = the engine's "
             "`cycles` counter.", "",
             "| run | measured | predicted | error |", "|---|---:|---:|---:|"]
    worst = 0.0
    for label, measured, predicted in entries:
        err = model_error(measured, predicted)
        worst = max(worst, abs(err))
        lines.append("| {} | {} | {} | {:+.2%} |".format(label, measured, predicted, err))
    ok = worst <= TOLERANCE
    lines += ["", "Worst |error| {:.2%} against a tolerance of {:.0%}: {}.".format(
        worst, TOLERANCE, "met" if ok else "MISSED"), ""]
    return lines, ok
