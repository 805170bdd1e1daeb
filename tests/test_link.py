"""The host link under Amaranth's simulator, through the UART pins: INFO, register writes and
reads, a token-buffer fill sent and drained back as streams, all bit-exact with what the
host library (boards.link) encodes and decodes; then every bad frame (bad CRC, truncated,
oversize, unknown command, wrong length, no such port, a load into a running stage, garbage
between frames) gets its status and no effect, and the next good frame works."""

import random
import struct

import pytest
from amaranth.sim import Simulator

from amaranth.lib import data

from boards.link import LinkError, ResponseReader, encode_frame, pack, unpack
from hw.link import VERSION, Command, HostLink, LinkPorts, Status, crc16
from sim.amaranth_streams import add_watchdog
from sim.uart_model import LineMonitor, transact, write_bytes
from tests.test_token_buffer import beats_of, tokens, top

SEED = 5303
DIV, MAX, TIMEOUT = 4, 64, 200


def run(bench, link=None, watchdog=None):
    """Run ``bench(ctx, link, call)`` on ``link`` (a fresh HostLink of the token buffer by
    default); ``call(cmd, payload, seq)`` sends a frame and returns ``(seq, status,
    payload)``. ``watchdog``: a bound on the simulation in cycles."""
    if link is None:
        link = HostLink(top(), divisor=DIV, max_payload=MAX, timeout=TIMEOUT)
    mon = LineMonitor(link.tx, DIV)

    async def testbench(ctx):
        async def call(cmd, payload=b"", seq=7, raw=None):
            frame = encode_frame(seq, cmd, payload) if raw is None else raw
            got = await transact(ctx, link.rx, mon, frame, DIV)
            return ResponseReader(_reader(got)).read()
        await bench(ctx, link, call)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(mon.process, background=True)
    sim.add_testbench(testbench)
    if watchdog is not None:
        add_watchdog(sim, watchdog, "the host link", period=1e-6)
    sim.run()                       # every wait of the bench is bounded; the monitor is not waited
    assert not mon.framing_errors


def _reader(data):
    buf = bytearray(data)

    def read(n):
        out = bytes(buf[:n])
        del buf[:n]
        return out
    return read


def addr(link, stage, reg):
    return link.top.addr(stage, reg)


def test_info_registers_and_streams_round_trip():
    rng = random.Random(SEED)
    xs = tokens(rng, 5, 8)
    done = []

    async def bench(ctx, link, call):
        ports = link.ports
        seq, st, body = await call(Command.INFO, seq=200)
        assert (seq, st) == (200, Status.OK)
        assert body == bytes([VERSION, MAX, 0, len(ports.inputs), len(ports.outputs)]
                             + [b for _, _, b in ports.inputs + ports.outputs])
        # Registers: write three settings, read them back and an unmapped address (0).
        regs = [(addr(link, "buf", "d"), 8), (addr(link, "buf", "fill_tokens"), 5),
                (addr(link, "buf", "drain_tokens"), 0)]
        _, st, body = await call(Command.WRITE, b"".join(struct.pack("<HI", a, v)
                                                         for a, v in regs))
        assert (st, body) == (Status.OK, b"")
        _, st, body = await call(Command.READ, b"".join(struct.pack("<H", a)
                                                        for a, _ in regs + [(0x3F, 0)]))
        assert st == Status.OK and struct.unpack("<4I", body) == (8, 5, 0, 0)
        # Start a fill, send the tokens on i (frames of up to 7 beats), drain them back on o.
        await call(Command.WRITE, struct.pack("<HI", addr(link, "buf", "ctrl"),
                                              link.top.windows["buf"][1].ctrl("start")))
        k, layout, size = ports.input("i")
        beats = beats_of(xs)
        for j in range(0, len(beats), (MAX - 1) // size):
            chunk = beats[j:j + (MAX - 1) // size]
            _, st, body = await call(Command.SEND, bytes([k]) + b"".join(pack(layout, b)
                                                                          for b in chunk))
            assert (st, struct.unpack("<H", body)[0]) == (Status.OK, len(chunk))
        regs = [(addr(link, "buf", "fill_tokens"), 0), (addr(link, "buf", "drain_tokens"), 5),
                (addr(link, "buf", "listed"), 0), (addr(link, "buf", "dest"), 0),
                (addr(link, "buf", "ctrl"), link.top.windows["buf"][1].ctrl("start"))]
        await call(Command.WRITE, b"".join(struct.pack("<HI", a, v) for a, v in regs))
        ko, layout_o, size_o = ports.output("o")
        got = []
        while len(got) < len(beats):
            _, st, body = await call(Command.RECV, struct.pack("<BH", ko, 100))
            assert st == Status.OK and len(body) % size_o == 0
            got += [unpack(layout_o, body[j:j + size_o]) for j in range(0, len(body), size_o)]
            assert body or len(got) == len(beats)
        assert got == beats
        _, st, body = await call(Command.RECV, struct.pack("<BH", ko, 3))
        assert (st, body) == (Status.OK, b"")              # nothing more: waits, then empty
        done.append(True)

    run(bench)
    assert done


def _bad_frames(link):
    """(name, frame bytes, expected status) of every kind of bad frame."""
    good = encode_frame(9, Command.WRITE, struct.pack("<HI", addr(link, "buf", "d"), 12))
    flipped = bytearray(good)
    flipped[7] ^= 0x10
    k_i, _, size_i = link.ports.input("i")
    return [
        ("bad-crc", bytes(flipped), Status.CRC),
        ("truncated", good[:6], Status.TRUNCATED),
        ("oversize", encode_frame(9, Command.SEND, bytes([0]) * (MAX + 1)), Status.OVERSIZE),
        ("unknown", encode_frame(9, 0x42, b"x"), Status.COMMAND),
        ("write-5", encode_frame(9, Command.WRITE, b"12345"), Status.LENGTH),
        ("read-odd", encode_frame(9, Command.READ, b"123"), Status.LENGTH),
        ("read-long", encode_frame(9, Command.READ, bytes(MAX // 2 + 2)), Status.LENGTH),
        ("recv-short", encode_frame(9, Command.RECV, b"\x00\x01"), Status.LENGTH),
        ("info-long", encode_frame(9, Command.INFO, b"\x00"), Status.LENGTH),
        ("send-port", encode_frame(9, Command.SEND, bytes([40, 1, 2])), Status.PORT),
        ("recv-port", encode_frame(9, Command.RECV, bytes([40, 1, 0])), Status.PORT),
        ("send-partial", encode_frame(9, Command.SEND, bytes([k_i]) + bytes(size_i + 1)),
         Status.LENGTH),
    ]


BAD = ["bad-crc", "truncated", "oversize", "unknown", "write-5", "read-odd", "read-long",
       "recv-short", "info-long", "send-port", "recv-port", "send-partial"]


@pytest.mark.parametrize("case", range(len(BAD)), ids=BAD)
def test_a_bad_frame_gets_its_status_has_no_effect_and_the_next_frame_works(case):
    seen = {}

    async def bench(ctx, link, call):
        name, frame, status = _bad_frames(link)[case]
        assert name == BAD[case]
        d = addr(link, "buf", "d")
        await call(Command.WRITE, struct.pack("<HI", d, 8))
        # Garbage before the frame is skipped; a truncated frame needs the line quiet.
        await write_bytes(ctx, link.rx, b"\x00\x13\x37", DIV)
        seq, st, body = await call(None, raw=frame)
        seen.update(seq=seq, status=st, body=body, want=status)
        _, st2, back = await call(Command.READ, struct.pack("<H", d), seq=10)
        seen.update(after=st2, d=struct.unpack("<I", back)[0])

    run(bench)
    assert seen["status"] == seen["want"] and seen["seq"] == 9, seen
    assert seen["after"] == Status.OK and seen["d"] == 8, seen     # nothing written


def test_a_load_into_a_running_stage_stalls_and_nothing_is_taken():
    """A keep list sent while the buffer runs a fill: ``keep_load`` is not ready, the SEND
    ends STALLED with 0 beats taken; after the fill ends, the same SEND is taken."""
    rng = random.Random(SEED + 1)
    xs = tokens(rng, 2, 8)
    seen = {}

    async def bench(ctx, link, call):
        ctrl = link.top.windows["buf"][1].ctrl("start")
        await call(Command.WRITE, b"".join(struct.pack("<HI", addr(link, "buf", r), v) for r, v in
                                           (("d", 8), ("fill_tokens", 2), ("drain_tokens", 0),
                                            ("ctrl", ctrl))))
        k, layout, _ = link.ports.input("buf.keep_load")
        keep = bytes([k]) + pack(layout, {"index": 1})
        _, st, body = await call(Command.SEND, keep)
        seen["running"] = (st, struct.unpack("<H", body)[0])
        ki, li, _ = link.ports.input("i")
        await call(Command.SEND, bytes([ki]) + b"".join(pack(li, b) for b in beats_of(xs)))
        _, st, body = await call(Command.SEND, keep)
        seen["idle"] = (st, struct.unpack("<H", body)[0])

    run(bench)
    assert seen["running"] == (Status.STALLED, 0) and seen["idle"] == (Status.OK, 1), seen


def test_the_hosts_reader_skips_junk_checks_the_crc_and_never_waits_forever():
    body = bytes([3, Status.OK]) + struct.pack("<H", 2) + b"\x34\x12"
    good = bytes([0x5A]) + body + crc16(body).to_bytes(2, "big")
    assert ResponseReader(_reader(b"\x00\xff" + good)).read() == (3, Status.OK, b"\x34\x12")
    bad = bytearray(good)
    bad[-3] ^= 1
    with pytest.raises(LinkError, match="CRC"):
        ResponseReader(_reader(bytes(bad))).read()
    with pytest.raises(LinkError, match="no response"):
        ResponseReader(_reader(good[:-1])).read()      # a read that times out returns b""


@pytest.mark.parametrize("path", ["i", "buf.keep_load", "o", "buf.head"])
def test_payloads_pack_to_the_bytes_the_link_carries_and_back(path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ports = LinkPorts(top())
    inputs = [p for p, _, _ in ports.inputs]
    _, layout, size = (ports.input if path in inputs else ports.output)(path)
    rng = random.Random(SEED + len(path))
    for _ in range(20):
        bits = rng.getrandbits(data.Layout.cast(layout).size)
        value = unpack(layout, bits.to_bytes(size, "little"))
        assert pack(layout, value) == bits.to_bytes(size, "little")


@pytest.mark.parametrize("kw", [dict(max_payload=4), dict(max_payload=1 << 16),
                                dict(timeout=3), dict(timeout=True)])
def test_link_parameters_are_checked(kw):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = top()
    with pytest.raises(ValueError, match="must be an integer in"):
        HostLink(t, divisor=DIV, **kw)


def test_multiple_of_six_is_exact_for_every_16_bit_length():
    """The WRITE length check without a divider, against ``%`` for all 65536 lengths."""
    from amaranth.hdl import Module, Signal
    from hw.link import _multiple_of_six
    n, y, m = Signal(16), Signal(), Module()
    m.d.comb += y.eq(_multiple_of_six(n))
    bad = []

    async def bench(ctx):
        for v in range(1 << 16):
            ctx.set(n, v)
            if ctx.get(y) != (v % 6 == 0):
                bad.append(v)
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, "lengths judged wrongly: {}".format(bad[:8])


def test_the_pe_array_behind_the_link_computes_what_the_contract_says():
    """The iCEBreaker's design (hw.link.LinkedPEArray): operand beats sent on ``i``, result
    rows read from ``o``, against the scalar golden model; a register READ of a top without
    registers answers 0."""
    from golden.blocks import pe_array_reference
    from hw.config import preset
    from hw.link import LinkedPEArray
    from sim.stimulus import pe_beats
    cfg = preset("tiny")
    rng = random.Random(SEED + 1)
    beats = pe_beats(cfg, rng, 12)
    want = pe_array_reference(cfg, beats)
    link = LinkedPEArray(cfg, divisor=DIV, max_payload=MAX, timeout=TIMEOUT)
    done = []

    async def bench(ctx, link, call):
        ports = link.ports
        k, layout, size = ports.input("i")
        ko, layout_o, size_o = ports.output("o")
        # The array holds a few accumulations' results: send what it takes (a SEND stalls
        # when its output is full), read what came out, until every row is back.
        per, todo, got = (MAX - 1) // size, list(beats), []
        while len(got) < len(want):
            if todo:
                chunk = todo[:per]
                _, st, body = await call(Command.SEND, bytes([k]) + b"".join(
                    pack(layout, b) for b in chunk))
                taken = struct.unpack("<H", body)[0]
                assert st in (Status.OK, Status.STALLED) and taken <= len(chunk), (st, taken)
                assert st == Status.STALLED or taken == len(chunk)
                todo = todo[taken:]
            _, st, body = await call(Command.RECV, struct.pack("<BH", ko, MAX // size_o))
            assert st == Status.OK
            got += [unpack(layout_o, body[j:j + size_o]) for j in range(0, len(body), size_o)]
        assert [dict(g, last=bool(g["last"]), overflow=bool(g["overflow"])) for g in got] == [
            dict(w, last=bool(w["last"]), overflow=bool(w["overflow"])) for w in want], (
            "seed {}".format(SEED + 1))
        _, st, body = await call(Command.READ, struct.pack("<H", 0))
        assert (st, body) == (Status.OK, bytes(4))
        done.append(True)

    run(bench, link)
    assert done
