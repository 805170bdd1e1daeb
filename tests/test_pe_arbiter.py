"""PEArbiter in front of a real PEArray under Amaranth's simulator: routing, round-robin
fairness at accumulation granularity, back-pressure from one client, and argument checks."""

import gc
import random
import warnings

import pytest
from amaranth.hdl import Elaboratable, Module, UnusedElaboratable
from amaranth.lib.wiring import connect
from amaranth.sim import Simulator

from golden.blocks import pe_array_reference
from hw.config import preset
from hw.pe_arbiter import PEArbiter
from hw.pe_array import PEArray
from sim import stimulus
from sim.amaranth_streams import StreamStalls, get_until, put_all, to_python
from sim.scoreboard import check_equal

SEED = 4321
CFG = preset("tiny").replace(lanes=4, rows=2, requant_lanes=4, bitmap_word=8, max_d=16,
                             max_heads=2, max_tokens=32, weight_depth=512, max_positions=8,
                             name="arb")


class ArbitratedArray(Elaboratable):
    """A PEArbiter driving a real PEArray; the testbench plays the clients."""

    def __init__(self, ports, in_flight=4):
        self.arb = PEArbiter(CFG, ports=ports, in_flight=in_flight)
        self.pe = PEArray(CFG)
        self.clients = self.arb.clients

    def elaborate(self, platform):
        m = Module()
        m.submodules.arb, m.submodules.pe = self.arb, self.pe
        connect(m, self.arb.array.req, self.pe.i)
        connect(m, self.pe.o, self.arb.array.res)
        return m


def simulate(top, benches, seed, limit=20_000, monitor=None):
    """Run the critical ``benches`` to completion. A background watchdog fails the run after
    ``limit`` cycles, saying how many beats each client sent and rows it received;
    ``monitor(clients, array)`` (if given) sees every cycle's handshake signals: per client
    (req.valid, req.ready, req.last, res.valid, res.ready), and (array.req valid, ready).
    Any failure names the seed."""
    sim = Simulator(top)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    n = len(top.clients)
    sent, taken = [0] * n, [0] * n
    sigs = [s for c in top.clients for s in (c.req.valid, c.req.ready, c.req.payload.last,
                                             c.res.valid, c.res.ready)]
    sigs += [top.arb.array.req.valid, top.arb.array.req.ready]

    async def watch(ctx):
        async for _, _, *values in ctx.tick().sample(*sigs):
            clients = [tuple(values[5 * k:5 * k + 5]) for k in range(n)]
            for k, (v, r, _, res_v, res_r) in enumerate(clients):
                sent[k] += v and r
                taken[k] += res_v and res_r
            if monitor is not None:
                monitor(clients, values[-2:])

    async def watchdog(ctx):
        await ctx.delay(limit * 1e-8)
        raise TimeoutError("not done after {} cycles: beats sent {}, rows received {}"
                           .format(limit, sent, taken))
    sim.add_testbench(watch, background=True)
    sim.add_testbench(watchdog, background=True)
    try:
        sim.run()
    except Exception as exc:
        raise AssertionError("seed {}: {!r}".format(seed, exc)) from exc


def workloads(seed, ports, groups=8, **kwargs):
    """Each client's own random accumulations and their reference result rows."""
    beats = [stimulus.pe_beats(CFG, random.Random(seed * 10 + n), groups, **kwargs)
             for n in range(ports)]
    return beats, [pe_array_reference(CFG, b) for b in beats]


def client_benches(top, beats, want, got, seed, stall):
    """A sender and a receiver per client, each with its own seeded random stalls."""
    benches = []
    for n, client in enumerate(top.clients):
        def stalls(k, n=n):
            return StreamStalls(seed * 100 + 2 * n + k, stall) if stall else None

        async def send(ctx, port=client.req, payloads=beats[n], s=stalls(0)):
            await put_all(ctx, port, payloads, s)

        async def receive(ctx, port=client.res, n=n, s=stalls(1)):
            got[n] = await get_until(ctx, port, lambda r: len(r) >= len(want[n]), s)
        benches += [send, receive]
    return benches


@pytest.mark.parametrize("ports", [1, 2, 3])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_routes_each_clients_results_back_in_order(ports, stall):
    """Every client receives, in order, exactly the reference rows of its own accumulations:
    nothing misrouted, lost or duplicated, with random valid and ready stalls on every port.
    With ``ports=1`` the arbiter is a pass-through for a single client."""
    seed = SEED + 10 * ports + int(stall * 10)
    top = ArbitratedArray(ports)
    beats, want = workloads(seed, ports)
    got = {}
    simulate(top, client_benches(top, beats, want, got, seed, stall), seed)
    for n in range(ports):
        check_equal(got[n], want[n], what="client {} row".format(n), seed=seed)


@pytest.mark.parametrize("active", [(0, 1, 2), (0, 2), (1,)])
def test_round_robin_at_accumulation_granularity(active):
    """With every active client always holding a beat (no stalls), the array sees whole
    accumulations only (no beat of another client between a client's first and ``last``
    beat) and the closing clients cycle through the active ones in order, starting at 0;
    an idle client (1 in ``(0, 2)``) costs no turn. Each array beat is one client's beat."""
    seed = SEED + sum(active)
    top = ArbitratedArray(3)
    beats, want = workloads(seed, 3, groups=6)
    beats = [b if n in active else [] for n, b in enumerate(beats)]
    want = [w if n in active else [] for n, w in enumerate(want)]
    fired, got = [], {}

    def monitor(clients, array):
        senders = [(n, last) for n, (v, r, last, _, _) in enumerate(clients) if v and r]
        assert len(senders) == (1 if array[0] and array[1] else 0), (clients, array)
        fired.extend(senders)
    simulate(top, client_benches(top, beats, want, got, seed, 0.0), seed, monitor=monitor)
    assert len(fired) == sum(map(len, beats))
    for (prev, prev_last), (n, _) in zip(fired, fired[1:]):
        assert prev_last or n == prev, "seed {}: accumulation of {} interleaved by {}".format(
            seed, prev, n)
    closes = [n for n, last in fired if last]
    assert closes == list(active) * 6, "seed {}: close order {}".format(seed, closes)
    for n in active:
        check_equal(got[n], want[n], what="client {} row".format(n), seed=seed)


def test_slow_client_does_not_block_others_requests():
    """Client 0 leaves its ``res.ready`` low for long random stretches; client 1 takes rows
    at once. Guaranteed (and checked): client 1's beats are still accepted while client 0's
    rows wait at the array output; both clients get exactly their own rows; all completes
    within a bound once client 0 takes its rows. *Not* guaranteed: client 1's *results*
    arriving during client 0's stall, since rows leave the array in the order the
    accumulations closed, so client 1's rows queued behind client 0's wait too (see
    :func:`test_stalled_client_capacity` for how many of client 1's accumulations may close
    meanwhile)."""
    seed = SEED + 77
    top = ArbitratedArray(2)
    beats, want = workloads(seed, 2, groups=10)
    rng = random.Random(seed)
    got, blocked_beats = {}, [0]

    async def slow_sink(ctx):
        rows, ready, left = [], False, 0
        while len(rows) < len(want[0]):
            if left == 0:
                ready = not ready
                left = rng.randint(1, 4) if ready else rng.randint(30, 120)
            left -= 1
            ctx.set(top.clients[0].res.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(top.clients[0].res.valid,
                                                           top.clients[0].res.payload)
            if valid and ready:
                rows.append(to_python(payload))
        ctx.set(top.clients[0].res.ready, 0)
        got[0] = rows

    def monitor(clients, array):
        c0, c1 = clients
        if c0[3] and not c0[4] and c1[0] and c1[1]:     # client 0 blocking, client 1 fires
            blocked_beats[0] += 1
    benches = client_benches(top, beats, want, got, seed, 0.0)
    benches[1] = slow_sink                              # client 0's receiver
    simulate(top, benches, seed, limit=8_000, monitor=monitor)
    for n in range(2):
        check_equal(got[n], want[n], what="client {} row".format(n), seed=seed)
    assert blocked_beats[0] >= 5, "seed {}: only {} client-1 beats accepted while client 0 " \
        "blocked".format(seed, blocked_beats[0])


@pytest.mark.parametrize("in_flight", [1, 2, 4, 8])
def test_stalled_client_capacity(in_flight):
    """Client 0 closes one accumulation and leaves its rows at the array output for 300
    cycles; client 1 keeps sending. Client 1 can close at most ``in_flight - 1``
    accumulations meanwhile (one ownership entry is client 0's) and, with this config, at
    least ``min(in_flight - 1, 2)``: client 0's two rows move out of the output bank into the
    output registers, the bank takes client 1's next accumulation, and the array stalls its
    input when the one after reaches the accumulators (a short one may also wait in the
    operand register: 3 with ``in_flight=8``). Then client 0 takes its rows and both clients
    receive exactly their own results."""
    seed = SEED + in_flight
    top = ArbitratedArray(2, in_flight=in_flight)
    beats, want = workloads(seed, 2, groups=6, max_len=3)
    beats[0], want[0] = beats[0][:next(i for i, b in enumerate(beats[0]) if b["last"]) + 1], \
        want[0][:CFG.rows]
    got, closes, cycle = {}, [], [0]

    async def late_sink(ctx):
        await ctx.tick().repeat(300)
        got[0] = await get_until(ctx, top.clients[0].res, lambda r: len(r) >= CFG.rows)

    def monitor(clients, array):
        cycle[0] += 1
        v, r, last = clients[1][:3]
        if v and r and last and cycle[0] <= 300:
            closes.append(cycle[0])
    benches = client_benches(top, beats, want, got, seed, 0.0)
    benches[1] = late_sink
    simulate(top, benches, seed, limit=2_000, monitor=monitor)
    assert min(in_flight - 1, 2) <= len(closes) <= in_flight - 1, \
        "seed {}: client 1 closed {} accumulations during the stall".format(seed, len(closes))
    for n in range(2):
        check_equal(got[n], want[n], what="client {} row".format(n), seed=seed)


@pytest.mark.parametrize("kwargs", [{"ports": 0}, {"ports": True}, {"ports": 2.0},
                                    {"in_flight": 0}, {"in_flight": False}])
def test_rejects_bad_arguments(kwargs):
    """Non-integer, boolean or non-positive ``ports`` / ``in_flight`` raise ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)   # the half-built component
        with pytest.raises(ValueError, match="must be a positive integer"):
            PEArbiter(CFG, **kwargs)
        gc.collect()
