"""The host library against the simulated chip: the generated Verilog of a linked design
(:class:`hw.link.Linked`: the whole model by default) under Verilator, its UART pins bridged to a pseudo-terminal
(:mod:`sim.tb_link`), and :class:`boards.link.Link` talking to that terminal through pyserial.

:func:`simulated_link` is a context manager: it starts the simulation in a thread, waits for
the terminal, opens the link (checking the chip's INFO), yields it, and on exit tells the
testbench to finish and joins it (raising what the simulation raised).
"""

import contextlib
import os
import tempfile
import threading
import time

__all__ = ["simulated_link"]


@contextlib.contextmanager
def simulated_link(config, *, design="model_link", simulator="verilator", optimised=False,
                   timeout=120.0, start_timeout=900.0):
    """Yield a :class:`boards.link.Link` to ``design`` (a linked design of
    :data:`hw.designs.DESIGNS`) for ``config`` running under ``simulator``; ``timeout`` is
    pyserial's read timeout (seconds of wall time per response), ``start_timeout`` bounds the
    build and start."""
    from boards.link import Link
    from hw.designs import design_class
    from hw.link import SIM_DIVISOR
    from sim.runner import run_cocotb
    tmp = tempfile.mkdtemp(prefix="rtsa_link_")
    path_file = os.path.join(tmp, "pty")
    failure = []

    def simulate():
        try:
            run_cocotb(design, config, simulator, "sim.tb_link", optimised=optimised,
                       env={"RTSA_PTY_FILE": path_file, "RTSA_DIVISOR": str(SIM_DIVISOR)})
        except BaseException as e:          # re-raised in the caller's thread
            failure.append(e)

    sim = threading.Thread(target=simulate, name="rtsa-link-sim", daemon=True)
    sim.start()
    t0 = time.monotonic()
    while not os.path.exists(path_file):
        if failure or not sim.is_alive():
            raise RuntimeError("the link simulation stopped before its terminal opened") \
                from (failure[0] if failure else None)
        if time.monotonic() - t0 > start_timeout:
            raise TimeoutError("the link simulation did not open its terminal in {} s"
                               .format(start_timeout))
        time.sleep(0.2)
    with open(path_file) as f:
        port = f.read().strip()
    # The host builds the same top as the chip: its port map and register windows.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = design_class(design)(config).top
    link = Link.open(port, top, timeout=timeout)
    try:
        yield link
    finally:
        link.close()
        open(path_file + ".done", "w").close()
        sim.join(timeout=600)
    # Reached only when the caller's block succeeded: its own error is not masked.
    if failure:
        raise failure[0]
    if sim.is_alive():
        raise TimeoutError("the link simulation did not finish in 600 s after the host")
