"""One job driver for every backend: Amaranth's simulator, cocotb (Icarus, Verilator), benches.

A :class:`Plan` says what a job does on a :class:`hw.pipeline.Pipeline` top, by stage and
register *name* (addresses come from the top's :attr:`~hw.pipeline.Pipeline.windows`):

* ``setup``: steps in order: ``("pulse", stage, names)`` (CTRL pulses), ``("write", stage,
  register, value)``, ``("load", port, beats)`` (a loading stream, at full speed),
  ``("start", stage, check)`` (START; with ``check`` the STATUS read after it must show
  RUNNING), ``("status", stage, key)`` (record STATUS), ``("ready", port, key)`` (record
  whether an input port is ready), ``("write_addr", addr, value)`` and ``("read_addr",
  addr, key)`` (write, and record a read of, a raw address of the register port: unmapped
  ones too);
* ``inputs``: streams sent once the setup is done, with random stalls;
* ``outputs``: streams received (with random stalls) and their expected beats;
* ``counters``: per stage, counters to read at the end (expected value, or ``None``);
* ``done``: stages whose STATUS must end DONE with no error bit.

Ports are named by path: ``"i"``, ``"o"``, ``"qkv.w_load"`` (Verilog ``qkv__w_load__*``).

:class:`JobDriver` runs a plan on a *backend* (:class:`AmaranthBackend`, or
:class:`sim.streams.CocotbBackend`): an object with ``tick(n)``, ``write(addr, value)``,
``read(addr)``, ``send(port, beats, stalls, timeout)``, ``receive(port, count, stalls, timeout)``,
``ready(port)``. Every wait is bounded: inputs and outputs by ``timeout`` idle cycles, DONE by
``done_polls`` back-to-back reads and then reads spaced ever further apart (up to 1024
cycles: a pass with no output stream, which fills the token buffer, waits for DONE without
Python work every cycle) until ``timeout`` cycles have passed. :func:`run_amaranth` runs a plan under Amaranth's simulator;
``sim.streams.run_cocotb_plan`` under cocotb. :meth:`Plan.check` compares a result with the
expectation, exactly.
"""

from dataclasses import dataclass, field
import os

from sim.amaranth_streams import (StreamStalls, add_watchdog, csr_read, csr_write, get_until,
                                  put_all)
from sim.scoreboard import check_equal

__all__ = ["Plan", "JobDriver", "AmaranthBackend", "run_amaranth", "run_amaranth_plans",
           "port_layout", "settings_from_env"]


def settings_from_env(environ=None):
    """The testbench settings that the harness passes in the environment, parsed in one place:
    ``RTSA_SEED`` (stall seed, default 1), ``RTSA_STALL`` (stall probability, default 0.3),
    ``RTSA_RESULTS`` (optional JSON result path)."""
    env = os.environ if environ is None else environ
    return {"seed": int(env.get("RTSA_SEED", "1")), "stall": float(env.get("RTSA_STALL", "0.3")),
            "results": env.get("RTSA_RESULTS") or None}


def port_layout(top, port):
    """The payload layout of stream ``port`` (a path such as ``"qkv.w_load"``) of ``top``."""
    members = top.signature.members
    *path, name = port.split(".")
    for p in path:
        members = members[p].signature.members
    return members[name].signature.members["payload"].shape


@dataclass
class Plan:
    """A job for a pipeline top (see the module docstring)."""
    name: str
    setup: list
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    done: list = field(default_factory=list)
    timeout: int = 20_000

    def check(self, top, result, seed):
        """Assert that ``result`` (of :class:`JobDriver`) is what the plan expects."""
        for port, expected in self.outputs:
            check_equal(result["outputs"][port], expected,
                        what="{} {}".format(self.name, port), seed=seed)
        for stage in self.done:
            regs = top.windows[stage][1]
            st = regs.status(result["status"][stage])
            assert st.done and not st.error, "{}: stage {} ended with status {} (seed {})".format(
                self.name, stage, regs.describe(result["status"][stage]), seed)
        for stage, wanted in self.counters.items():
            got = result["counters"][stage]
            for name, value in wanted.items():
                assert value is None or got[name] == value, \
                    "{}: stage {} counter {} is {}, expected {} (seed {}; all: {})".format(
                        self.name, stage, name, got[name], value, seed, got)


class JobDriver:
    """Runs one :class:`Plan` on ``top`` (the :class:`hw.pipeline.Pipeline` whose ports and
    register windows the backend drives), with seeded stalls on the input and output streams
    (stream ``k`` of the plan uses seed ``seed + k``). ``stall`` is the stall probability of
    every stream, or a pair ``(inputs, outputs)`` of them (a slow sink behind a fast source)."""

    def __init__(self, top, plan, *, seed, stall, done_polls=20, max_wait=3):
        self.top, self.plan = top, plan
        self.seed, self.stall, self.done_polls = seed, stall, done_polls
        self.max_wait = max_wait
        self.go = False
        self._sent = 0                  # input streams fully sent
        self.result = {"outputs": {}, "status": {}, "counters": {}, "seen": {}}

    def _stalls(self, k, output=False):
        prob = self.stall[output] if isinstance(self.stall, tuple) else self.stall
        return StreamStalls(self.seed + k, prob, self.max_wait) if prob else None

    def _addr(self, stage, register):
        return self.top.addr(stage, register)

    async def setup(self, be):
        regs = self.top.windows
        for step in self.plan.setup:
            kind = step[0]
            if kind == "pulse":
                _, stage, names = step
                await be.write(self._addr(stage, "ctrl"), regs[stage][1].ctrl(*names))
            elif kind == "write":
                _, stage, register, value = step
                await be.write(self._addr(stage, register), int(value))
            elif kind == "load":
                _, port, beats = step
                await be.send(port, beats, None, self.plan.timeout)
            elif kind == "start":
                _, stage, check = step
                await be.write(self._addr(stage, "ctrl"), regs[stage][1].ctrl("start"))
                if check:
                    status = await be.read(self._addr(stage, "status"))
                    self.result["seen"][stage + ".started"] = status
                    # START clears DONE: DONE here means the run already finished (a slow
                    # backend, the serial link, reads STATUS long after the START).
                    st = regs[stage][1].status(status)
                    assert st.running or (st.done and not st.error), \
                        "{}: stage {} did not start, status {}".format(
                            self.plan.name, stage, regs[stage][1].describe(status))
            elif kind == "status":
                _, stage, key = step
                self.result["seen"][key] = await be.read(self._addr(stage, "status"))
            elif kind == "ready":
                _, port, key = step
                self.result["seen"][key] = be.ready(port)
            elif kind == "write_addr":
                _, addr, value = step
                await be.write(int(addr), int(value))
            elif kind == "read_addr":
                _, addr, key = step
                self.result["seen"][key] = await be.read(int(addr))
            else:
                raise ValueError("Unknown plan step {!r}".format(step))
        self.go = True

    def sources(self):
        """Coroutine functions ``f(be)`` sending the plan's inputs once the setup is done."""
        def source(k, port, beats):
            async def run(be):
                while not self.go:
                    await be.tick()
                await be.send(port, beats, self._stalls(k), self.plan.timeout)
                self._sent += 1
            return run
        return [source(k, p, b) for k, (p, b) in enumerate(self.plan.inputs)]

    def sinks(self):
        """Coroutine functions ``f(be)`` receiving the plan's outputs once the setup is
        done."""
        def sink(k, port, expected):
            async def run(be):
                while not self.go:
                    await be.tick()
                self.result["outputs"][port] = await be.receive(
                    port, len(expected), self._stalls(len(self.plan.inputs) + k, output=True),
                    self.plan.timeout)
            return run
        return [sink(k, p, e) for k, (p, e) in enumerate(self.plan.outputs)]

    async def finish(self, be):
        """Wait for every output and (at most ``timeout`` cycles) for every input to be sent,
        then for DONE of the ``done`` stages (bounded), and read the counters."""
        while len(self.result["outputs"]) < len(self.plan.outputs):
            await be.tick()
        for _ in range(self.plan.timeout):
            if self._sent == len(self.plan.inputs):
                break
            await be.tick()
        regs = self.top.windows
        for stage in dict.fromkeys(list(self.plan.done) + list(self.plan.counters)):
            polls, waited, step = 0, 0, 1
            while True:
                status = await be.read(self._addr(stage, "status"))
                polls += 1
                if regs[stage][1].status(status).done or waited >= self.plan.timeout:
                    break
                if polls >= self.done_polls:
                    await be.tick(step)
                    waited, step = waited + step, min(2 * step, 1024)
            self.result["status"][stage] = status
        for stage, wanted in self.plan.counters.items():
            names = list(wanted) or list(regs[stage][1].counters)
            self.result["counters"][stage] = {n: await be.read(self._addr(stage, n))
                                              for n in names}
        return self.result


class AmaranthBackend:
    """The backend interface on Amaranth's simulator (one per testbench process)."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut

    def _port(self, port):
        obj = self.dut
        for p in port.split("."):
            obj = getattr(obj, p)
        return obj

    async def tick(self, n=1):
        await self.ctx.tick().repeat(n)

    async def write(self, addr, value):
        await csr_write(self.ctx, self.dut.csr, addr, value)

    async def read(self, addr):
        return await csr_read(self.ctx, self.dut.csr, addr)

    async def send(self, port, beats, stalls, timeout):
        await put_all(self.ctx, self._port(port), beats, stalls, timeout=timeout)

    async def receive(self, port, count, stalls, timeout):
        return await get_until(self.ctx, self._port(port), lambda r: len(r) >= count, stalls,
                               timeout)

    def ready(self, port):
        return bool(self.ctx.get(self._port(port).ready))


def run_amaranth(top, plan, *, seed, stall=0.3, check=True, deadline=None, max_wait=3,
                 watchdog=None):
    """Run ``plan`` on a fresh simulation of ``top``; the driver's result (checked with
    :meth:`Plan.check` unless ``check`` is false). Each stall lasts up to ``max_wait``
    cycles."""
    return run_amaranth_plans(top, [plan], seed=seed, stall=stall, check=[check],
                              deadline=deadline, max_wait=max_wait, watchdog=watchdog)[0]


def run_amaranth_plans(top, plans, *, seed, stall=0.3, check=None, deadline=None, max_wait=3,
                       watchdog=None):
    """Run ``plans`` one after the other on one simulation of ``top`` (a bad job, then the
    good job that must still be exact); their results, each checked unless ``check[k]`` is
    false. Plan ``k``'s stalls use seed ``seed + 1000 * k``. ``watchdog``: a bound in cycles
    on the whole simulation (:func:`sim.amaranth_streams.add_watchdog`)."""
    from amaranth.sim import Simulator
    sim = Simulator(top)
    sim.add_clock(1e-8)
    drivers = [JobDriver(top, p, seed=seed + 1000 * k, stall=stall, max_wait=max_wait)
               for k, p in enumerate(plans)]

    async def control(ctx):
        be = AmaranthBackend(ctx, top)
        for drv in drivers:
            await drv.setup(be)
            await drv.finish(be)

    def process(fn):
        async def run(ctx):
            await fn(AmaranthBackend(ctx, top))
        return run

    sim.add_testbench(control)
    if watchdog is not None:
        add_watchdog(sim, watchdog, "plans {}".format(", ".join(p.name for p in plans)))
    for drv in drivers:
        for fn in drv.sources() + drv.sinks():
            sim.add_testbench(process(fn))
    if deadline is None:
        sim.run()
    else:
        sim.run_until(deadline)
    check = [True] * len(plans) if check is None else check
    for k, (plan, drv) in enumerate(zip(plans, drivers)):
        if check[k]:
            plan.check(top, drv.result, seed + 1000 * k)
    return [drv.result for drv in drivers]
