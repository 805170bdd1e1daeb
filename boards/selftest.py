"""Self-checking FPGA top: the PE array against golden vectors stored on chip.

The test vectors are PE-array input beats from :func:`sim.stimulus.pe_beats` (a fixed seed) and
the output rows the scalar golden model :func:`golden.blocks.pe_array_reference` expects for
them. Both live in ROMs (:class:`amaranth.lib.memory.Memory` with ``init``); a sequencer plays
the beats into a :class:`hw.pe_array.PEArray` through its valid/ready handshake, compares every
output row with the expected row, and gives a verdict at the end of each pass.

The test repeats forever: ``failed`` is sticky (until reset), ``passed`` is high once a pass has
completed and no pass has ever failed, so a board that shows ``passed`` after running for an
hour has checked the array some hundred million times. ``heartbeat`` blinks at about 1 Hz so a
hung clock or a missing bitstream is told apart from a design that never finishes.

The same top runs in Amaranth's simulator (``tests/test_boards.py``); on a platform its status
signals also drive the LEDs named by ``leds``.
"""

import random

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import fifo, io, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from boards.top import heartbeat
from golden.blocks import pe_array_reference
from golden.contract import PERoute
from hw.config import RTSAConfig
from hw.pe_array import PEArray, pe_input_layout, pe_output_layout
from sim.stimulus import pe_beats

__all__ = ["SEED", "selftest_vectors", "SelfTest"]

#: Base seed of the on-chip test vectors (see :func:`selftest_vectors`).
SEED = 2024
#: Status outputs of :class:`SelfTest`, the roles an LED can be given.
ROLES = ("heartbeat", "passed", "failed", "done")


def _covered(config, beats):
    """True when ``beats`` exercise what the self-test is meant to check on chip."""
    full = (1 << config.lanes) - 1
    masks = {m for b in beats for m in b["mask"]}
    lengths, run = [], 0
    for b in beats:
        run += 1
        if b["last"]:
            lengths.append(run)
            run = 0
    closing = [b for b in beats if b["last"]]
    requantised = [v for n, row in enumerate(pe_array_reference(config, beats))
                   if not closing[n // config.rows]["bypass"] for v in row["data"]]
    return ({b["route"] for b in beats} == set(PERoute)
            and {b["bypass"] for b in beats} == {0, 1}
            and 0 in masks and full in masks and any(0 < m < full for m in masks)
            and max(lengths) > 1 and min(lengths) == 1
            # Requantisation must produce more than zeros to be checked at all.
            and any(v != 0 for v in requantised))


def selftest_vectors(config, *, seed=SEED, groups=8, max_len=3, max_beats=24):
    """Input beats and expected output rows of the on-chip self-test.

    The vectors are those of the first seed from ``seed`` on whose beats cover every operand
    route, bypassed and requantised accumulations (with nonzero requantised results), zero, full
    and partial lane masks, and accumulations of one and of several beats, in at most
    ``max_beats`` beats. The search is deterministic, so a configuration always gets the same
    vectors.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    seed : int
        First seed tried.
    groups : int
        Accumulations (each closed by ``last``) in the test.
    max_len : int
        Most beats of one accumulation.
    max_beats : int
        Most input beats in all (each is one ROM word, ``pe_input_layout(config).size`` bits).

    Returns
    -------
    (list of dict, list of dict, int)
        The beats, the expected output rows (``groups * config.rows`` of them) and the seed
        that produced them.
    """
    if not isinstance(config, RTSAConfig):
        raise TypeError("config must be an RTSAConfig, not {!r}".format(config))
    for name, value in (("seed", seed), ("groups", groups), ("max_len", max_len),
                        ("max_beats", max_beats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed"
                                                                             else 1):
            raise ValueError("{} must be a {} integer, not {!r}"
                             .format(name, "non-negative" if name == "seed" else "positive",
                                     value))
    if groups < 3 or max_len < 2:
        raise ValueError("Covering all three routes and several beat counts needs groups >= 3 "
                         "and max_len >= 2, not groups={!r}, max_len={!r}"
                         .format(groups, max_len))
    for s in range(seed, seed + 1000):
        beats = pe_beats(config, random.Random(s), groups, max_len=max_len)
        if len(beats) <= max_beats and _covered(config, beats):
            return beats, pe_array_reference(config, beats), s
    raise ValueError("No seed in [{}, {}) gives covering vectors of at most {} beats; raise "
                     "max_beats or groups".format(seed, seed + 1000, max_beats))


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("{} must be a positive integer, not {!r}".format(name, value))
    return value


class SelfTest(wiring.Component):
    """PE array self-test against golden vectors in ROM, repeated forever.

    One pass: the sequencer feeds every input beat into the array (waiting whenever the array's
    ``i.ready`` is low), accepts output rows (with a fixed pseudo-random back-pressure pattern
    when ``stall_output``), and compares each row, every field of it, with the next expected
    row. The pass fails on a mismatch, on a row beyond the expected count (also seen during a
    short drain window after the last one), or when the expected rows do not all arrive within a
    generous cycle budget. Then the next pass starts; the array needs no reset between passes
    since every accumulation of the vectors starts with ``clear``.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
        Configuration of the array under test.
    heartbeat_cycles : int or None
        Clock cycles between toggles of ``heartbeat``. ``None`` takes half the platform's
        default clock frequency (a 1 Hz blink); a simulation (no platform) must give a number.
    seed, groups, max_len, max_beats : int
        Passed to :func:`selftest_vectors`.
    corrupt_row : int or None
        Index of an expected row whose lane 0 value gets its low bit flipped in ROM, so that the
        self-check is seen to fail (tests only).
    stall_output : bool
        Back-pressure the array's output one cycle in four (a fixed LFSR pattern), so that the
        array's stall path is checked too.
    leds : dict or None
        On a platform, ``{role: (resource name, number)}`` for roles in ``"heartbeat"``,
        ``"passed"``, ``"failed"``, ``"done"``: the LED each status drives.

    Attributes
    ----------
    heartbeat : ``Out(1)``
        Toggles every ``heartbeat_cycles`` cycles.
    passed : ``Out(1)``
        At least one pass has completed and none has failed.
    failed : ``Out(1)``
        A pass has failed (sticky).
    done : ``Out(1)``
        At least one pass has completed.
    passes : ``Out(16)``
        Completed passes, wrapping.
    """

    def __init__(self, config, *, heartbeat_cycles=None, seed=SEED, groups=8, max_len=3,
                 max_beats=24, corrupt_row=None, stall_output=True, leds=None):
        try:
            self._setup(config, heartbeat_cycles, seed, groups, max_len, max_beats,
                        corrupt_row, stall_output, leds)
        except Exception:
            # Rejected parameters are no design left unused: no UnusedElaboratable warning.
            self._MustUse__silence = True
            raise
        super().__init__({
            "heartbeat": Out(1), "passed": Out(1), "failed": Out(1), "done": Out(1),
            "passes": Out(16),
        })

    def _setup(self, config, heartbeat_cycles, seed, groups, max_len, max_beats, corrupt_row,
               stall_output, leds):
        if heartbeat_cycles is not None:
            _positive_int("heartbeat_cycles", heartbeat_cycles)
        beats, expected, used_seed = selftest_vectors(config, seed=seed, groups=groups,
                                                      max_len=max_len, max_beats=max_beats)
        if corrupt_row is not None:
            if (not isinstance(corrupt_row, int) or isinstance(corrupt_row, bool)
                    or not 0 <= corrupt_row < len(expected)):
                raise ValueError("corrupt_row must be an index into the {} expected rows, not "
                                 "{!r}".format(len(expected), corrupt_row))
            row = dict(expected[corrupt_row], data=list(expected[corrupt_row]["data"]))
            row["data"][0] ^= 1     # stays inside the accumulator format either way
            expected = expected[:corrupt_row] + [row] + expected[corrupt_row + 1:]
        if not isinstance(stall_output, bool):
            raise TypeError("stall_output must be a bool, not {!r}".format(stall_output))
        leds = dict(leds or {})
        for role, where in leds.items():
            if role not in ROLES:
                raise ValueError("Unknown LED role {!r}; choose from {}"
                                 .format(role, ", ".join(ROLES)))
            if (not isinstance(where, tuple) or len(where) != 2
                    or not isinstance(where[0], str) or not isinstance(where[1], int)):
                raise ValueError("LED of {!r} must be (resource name, number), not {!r}"
                                 .format(role, where))
        self._config = config
        self._heartbeat_cycles = heartbeat_cycles
        self._beats, self._expected, self._seed = beats, expected, used_seed
        self._stall_output = stall_output
        self._leds = leds

    @property
    def config(self):
        return self._config

    @property
    def beats(self):
        """Input beats in ROM (list of dict)."""
        return list(self._beats)

    @property
    def expected(self):
        """Expected output rows in ROM (list of dict), corruption included."""
        return list(self._expected)

    @property
    def seed(self):
        """Seed the vectors came from."""
        return self._seed

    @property
    def cycle_budget(self):
        """Cycles a pass may take before its missing rows count as a failure."""
        cfg = self._config
        drain = len(self._expected) * (cfg.lanes // cfg.requant_lanes + 1)
        # Four times the cycles an unstalled array needs (stalls cost at most a quarter).
        return 4 * (len(self._beats) + drain) + 64

    def elaborate(self, platform):
        half = self._heartbeat_cycles
        if half is None:
            if platform is None:
                raise ValueError("Without a platform, heartbeat_cycles must be given")
            half = max(1, int(platform.default_clk_frequency) // 2)

        m = Module()
        cfg = self._config
        n_in, n_out = len(self._beats), len(self._expected)

        m.submodules.pe = pe = PEArray(cfg)
        m.submodules.beat_rom = beat_rom = Memory(
            shape=pe_input_layout(cfg), depth=n_in, init=self._beats)
        m.submodules.expect_rom = expect_rom = Memory(
            shape=pe_output_layout(cfg), depth=n_out, init=self._expected)
        beat_rd = beat_rom.read_port()
        expect_rd = expect_rom.read_port()

        heartbeat(m, half, self.heartbeat)

        # --- Sequencer. --------------------------------------------------------------------
        in_addr = Signal(range(n_in + 1))
        out_idx = Signal(range(n_out + 1))
        in_next = Signal.like(in_addr)
        out_next = Signal.like(out_idx)
        start = Signal()
        # The beats reach the array through a two-entry FIFO: the array's ready then decides
        # only the FIFO's read, not the ROM's address, whose data crossed the chip to every
        # operand register (the ULX3S build's critical path, 22.9 ns at 43.6 MHz).
        m.submodules.feed = feed = fifo.SyncFIFOBuffered(
            width=pe_input_layout(cfg).size, depth=2)
        in_fire = feed.w_en & feed.w_rdy
        out_fire = pe.o.valid & pe.o.ready
        # Read-ahead: the ROMs are addressed with next cycle's index, so that their
        # (registered) data always belongs to the current one and a beat can go every cycle.
        m.d.comb += [
            in_next.eq(Mux(start, 0, in_addr + in_fire)),
            out_next.eq(Mux(start, 0, out_idx + out_fire)),
            beat_rd.addr.eq(in_next),
            expect_rd.addr.eq(out_next),
        ]
        m.d.sync += [in_addr.eq(in_next), out_idx.eq(out_next)]

        running = Signal()
        m.d.comb += [feed.w_data.eq(beat_rd.data), feed.w_en.eq(running & (in_addr != n_in)),
                     pe.i.payload.eq(feed.r_data), pe.i.valid.eq(feed.r_rdy),
                     feed.r_en.eq(pe.i.ready)]

        if self._stall_output:
            # x^8 + x^6 + x^5 + x^4 + 1: maximal length, so the pattern never locks up.
            lfsr = Signal(8, init=0x5A)
            m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[4]))
            m.d.comb += pe.o.ready.eq(~(lfsr[0] & lfsr[1]))
        else:
            m.d.comb += pe.o.ready.eq(1)

        # Compare in two steps: XOR registered first, its reduction next cycle, so the wide
        # compare is no critical path.
        diff = Signal(len(pe.o.payload.as_value()))
        check = Signal()
        mismatch, extra, timeout = Signal(), Signal(), Signal()
        m.d.sync += check.eq(0)
        with m.If(out_fire):
            with m.If(out_idx == n_out):
                m.d.sync += extra.eq(1)
            with m.Else():
                m.d.sync += [diff.eq(pe.o.payload.as_value() ^ expect_rd.data.as_value()),
                             check.eq(1)]
        with m.If(check & diff.any()):
            m.d.sync += mismatch.eq(1)

        budget = self.cycle_budget
        timer = Signal(range(budget + 1))
        drain = Signal(range(16))
        ever_done = Signal()
        with m.FSM():
            with m.State("START"):
                m.d.comb += start.eq(1)
                m.d.sync += [mismatch.eq(0), extra.eq(0), timeout.eq(0), timer.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If((in_addr == n_in) & (out_idx == n_out)):
                    m.d.sync += drain.eq(0)
                    m.next = "DRAIN"
                with m.Elif(timer == budget):
                    m.d.sync += timeout.eq(1)
                    m.next = "VERDICT"
            with m.State("DRAIN"):
                # Long enough for the last compare to land and for a spurious extra row still
                # in the array's pipeline to come out.
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == 15):
                    m.next = "VERDICT"
            with m.State("VERDICT"):
                m.d.sync += ever_done.eq(1)
                with m.If(mismatch | extra | timeout):
                    m.d.sync += self.failed.eq(1)
                with m.Else():
                    m.d.sync += self.passes.eq(self.passes + 1)
                m.next = "START"
        m.d.comb += [self.done.eq(ever_done),
                     self.passed.eq(ever_done & ~self.failed)]

        # --- LEDs. -------------------------------------------------------------------------
        if platform is not None:
            for role, (name, number) in self._leds.items():
                buf = io.Buffer("o", platform.request(name, number, dir="-"))
                m.submodules[f"led_{role}"] = buf
                m.d.comb += buf.o.eq(getattr(self, role))
        return m
