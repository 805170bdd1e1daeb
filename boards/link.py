"""The host's end of the UART link (:mod:`hw.link`): frames, a :class:`Link` over pyserial, and
a backend that runs :mod:`sim.driver` plans over it.

::

    link = Link.open("/dev/ttyUSB0", top)          # top: the hw.model.Model the board holds
    link.write_register("embed", "layer", 0)
    link.send("embed.w_load", beats)               # beats as the stream's lib.data payloads
    logits = link.recv("o", 2)

:func:`run_plans` runs a list of :class:`sim.driver.Plan` (what every simulator runs) on the
board: the same jobs, the same expected outputs and counters, checked the same way.

Every wait is bounded: a response that does not come within the serial timeout raises
:exc:`LinkError`, a stream that does not move for ``deadline`` seconds too.
"""

import asyncio
import struct
import time
from collections import Counter

from amaranth.hdl import Shape
from amaranth.lib import data

from hw.link import (SYNC_CHIP, SYNC_HOST, Command, LinkPorts, Status, crc16, info_bytes,
                     payload_bits)

__all__ = ["LinkError", "FRAME_BYTES", "encode_frame", "planned_traffic", "ResponseReader",
           "pack", "unpack", "Link", "LinkBackend", "run_plans"]


class LinkError(RuntimeError):
    """A response with a status other than OK (``status``), or none at all (``status`` None)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def encode_frame(seq, cmd, payload=b""):
    """The bytes of one host-to-chip frame."""
    payload = bytes(payload)
    body = bytes([seq & 0xFF, int(cmd) & 0xFF]) + struct.pack("<H", len(payload)) + payload
    return bytes([SYNC_HOST]) + body + crc16(body).to_bytes(2, "big")


#: Bytes a frame adds to its payload: sync, sequence number, command, length (2), CRC (2).
FRAME_BYTES = 7


def planned_traffic(ports, plans, *, max_payload=1024):
    """What ``plans`` (:class:`sim.driver.Plan` s) move over the link, counted without running
    them: ``{path: (beats, payload_bytes, line_bytes)}`` for every stream of ``ports``
    (:class:`hw.link.LinkPorts`) a plan loads, feeds or reads. A host-to-chip stream's line
    bytes are whole ``SEND`` frames of as many beats as a payload holds (a stream that stalls
    a frame costs more; one that never does costs exactly this); a chip-to-host stream's are
    its payload (the ``RECV`` frames around it depend on how the beats come)."""
    out = {}

    def add(path, n, size, line):
        b, p, l = out.get(path, (0, 0, 0))
        out[path] = (b + n, p + n * size, l + line)
    for plan in plans:
        for path, beats in [(s[1], s[2]) for s in plan.setup if s[0] == "load"] + list(plan.inputs):
            _, _, size = ports.input(path)
            frames = -(-len(beats) // ((max_payload - 1) // size))
            add(path, len(beats), size, len(beats) * size + frames * (FRAME_BYTES + 1))
        for path, beats in plan.outputs:
            _, _, size = ports.output(path)
            add(path, len(beats), size, len(beats) * size)
    return out


class ResponseReader:
    """Reads one chip-to-host frame from ``read(n)`` (a serial port's): skips bytes before the
    sync byte, checks the CRC; returns ``(seq, status, payload)``."""

    def __init__(self, read):
        self._read = read

    def _exactly(self, n):
        got = bytearray()
        while len(got) < n:
            chunk = self._read(n - len(got))
            if not chunk:
                raise LinkError("no response: {} of {} bytes came".format(len(got), n))
            got += chunk
        return bytes(got)

    def read(self):
        skipped = 0
        while self._exactly(1)[0] != SYNC_CHIP:
            skipped += 1
            if skipped > 1 << 16:
                raise LinkError("no response: no sync byte in 65536 bytes")
        head = self._exactly(4)
        (length,) = struct.unpack("<H", head[2:])
        rest = self._exactly(length + 2)
        body, crc = head + rest[:length], int.from_bytes(rest[length:], "big")
        if crc16(body) != crc:
            raise LinkError("response CRC {:#06x} does not check (want {:#06x})"
                            .format(crc, crc16(body)))
        return head[0], head[1], rest[:length]


def pack(layout, payload):
    """A stream payload (dict/list for a ``lib.data`` layout, int for a shape) -> its bytes."""
    if isinstance(layout, data.Layout):
        bits = layout.const(payload).as_value().value
    else:
        bits = int(payload) & ((1 << payload_bits(layout)) - 1)
    return bits.to_bytes(-(-payload_bits(layout) // 8), "little")


def unpack(layout, raw):
    """The bytes of a stream payload -> dict/list (``lib.data`` layout) or int."""
    from sim.amaranth_streams import to_python
    bits = int.from_bytes(raw, "little")
    if isinstance(layout, data.Layout):
        return to_python(data.Const(layout, bits & ((1 << layout.size) - 1)))
    shape = Shape.cast(layout)
    bits &= (1 << shape.width) - 1
    return bits - (1 << shape.width) if shape.signed and bits >> (shape.width - 1) else bits


class Link:
    """Commands over a serial port to a :class:`hw.link.HostLink` that holds ``top``.

    Parameters
    ----------
    serial : object with ``write(bytes)`` and ``read(n)`` (a ``serial.Serial``)
    top : the component behind the link (its streams and register windows name the ports)
    max_payload : the link's frame payload size (checked against the chip's INFO)

    Attributes
    ----------
    frames : int
        Commands sent (each answered).
    bytes_out, bytes_in : int
        Bytes on the line to the chip and back, frames whole (sync, header, payload, CRC):
        the line time of a run is ``10 * max(bytes_out, bytes_in) / baud`` (8N1, full duplex).
    beat_bytes : collections.Counter
        Payload bytes of the beats each stream port moved (``"qkv.w_load"``, ``"o"``, ...).
    """

    def __init__(self, serial, top, *, max_payload=1024):
        self.serial, self.top = serial, top
        self.ports = LinkPorts(top)
        self.max_payload = max_payload
        self._seq = 0
        self._reader = ResponseReader(self._read)
        self.frames = self.bytes_out = self.bytes_in = 0
        self.beat_bytes = Counter()

    def _read(self, n):
        got = self.serial.read(n)
        self.bytes_in += len(got)
        return got

    @classmethod
    def open(cls, port, top, *, baud=3_000_000, timeout=2.0, max_payload=1024):
        """Open ``port`` (a device such as ``/dev/ttyUSB0``, or any pyserial URL) and check the
        chip's port map (INFO)."""
        import serial
        ser = serial.serial_for_url(port, baudrate=baud, timeout=timeout)
        link = cls(ser, top, max_payload=max_payload)
        link.check_info()
        return link

    def close(self):
        self.serial.close()

    def command(self, cmd, payload=b"", *, ok=(Status.OK,)):
        """Send one frame, return ``(status, payload)`` of its response; raises
        :exc:`LinkError` for a status not in ``ok`` or a response to another frame."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        frame = encode_frame(seq, cmd, payload)
        self.serial.write(frame)
        self.bytes_out += len(frame)
        got_seq, status, body = self._reader.read()
        self.frames += 1
        if got_seq != seq:
            raise LinkError("response to frame {} came for frame {}".format(got_seq, seq))
        if status not in ok:
            name = Status(status).name if status in Status._value2member_map_ else status
            raise LinkError("{} frame {}: status {}".format(Command(cmd).name, seq, name),
                            status)
        return Status(status), body

    def check_info(self):
        """The chip's INFO must match this link's port map and payload size."""
        _, body = self.command(Command.INFO)
        want = info_bytes(self.ports, self.max_payload)
        if body != want:
            raise LinkError("the chip's INFO {} does not match this top's {}"
                            .format(body.hex(), want.hex()))

    # Registers.
    def write(self, addr, value):
        self.write_many([(addr, value)])

    def write_many(self, pairs):
        pairs = list(pairs)
        per = self.max_payload // 6
        for k in range(0, len(pairs), per):
            self.command(Command.WRITE, b"".join(struct.pack("<HI", a, v & 0xFFFFFFFF)
                                                 for a, v in pairs[k:k + per]))

    def read(self, addr):
        return self.read_many([addr])[0]

    def read_many(self, addrs):
        addrs, out = list(addrs), []
        per = self.max_payload // 4
        for k in range(0, len(addrs), per):
            _, body = self.command(Command.READ, b"".join(struct.pack("<H", a)
                                                          for a in addrs[k:k + per]))
            out += [v for (v,) in struct.iter_unpack("<I", body)]
        return out

    # Streams.
    def send_some(self, path, beats):
        """Send as many of ``beats`` as one frame holds and the stream takes now; returns how
        many were taken."""
        k, layout, size = self.ports.input(path)
        per = (self.max_payload - 1) // size
        chunk = beats[:per]
        status, body = self.command(Command.SEND,
                                    bytes([k]) + b"".join(pack(layout, b) for b in chunk),
                                    ok=(Status.OK, Status.STALLED))
        took = struct.unpack("<H", body)[0]
        self.beat_bytes[path] += took * size
        return took

    def sending(self, path, beats, *, deadline=10.0):
        """Send every beat, a frame at a time, yielding after each frame (so that a caller can
        interleave other streams); raises :exc:`LinkError` when the stream takes none for
        ``deadline`` seconds (a load into a running stage)."""
        beats, sent, last = list(beats), 0, time.monotonic()
        while sent < len(beats):
            took = self.send_some(path, beats[sent:])
            sent += took
            if took:
                last = time.monotonic()
            elif time.monotonic() - last > deadline:
                raise LinkError("{}: {} of {} beats taken, then none for {} s".format(
                    path, sent, len(beats), deadline), Status.STALLED)
            yield sent

    def send(self, path, beats, *, deadline=10.0):
        """Send every beat (:meth:`sending`); returns how many."""
        sent = 0
        for sent in self.sending(path, beats, deadline=deadline):
            pass
        return sent

    def recv_some(self, path, count):
        """Up to ``count`` beats that the stream offers now (the chip waits ``timeout``
        cycles for each)."""
        k, layout, size = self.ports.output(path)
        _, body = self.command(Command.RECV, struct.pack("<BH", k, min(count, 0xFFFF)))
        self.beat_bytes[path] += len(body)
        return [unpack(layout, body[j:j + size]) for j in range(0, len(body), size)]

    def recv(self, path, count, *, deadline=10.0):
        """``count`` beats; raises :exc:`LinkError` when none come for ``deadline`` s."""
        got, last = [], time.monotonic()
        while len(got) < count:
            more = self.recv_some(path, count - len(got))
            got += more
            if more:
                last = time.monotonic()
            elif time.monotonic() - last > deadline:
                raise LinkError("{}: {} of {} beats came, then none for {} s".format(
                    path, len(got), count, deadline))
        return got

    # The register windows of a pipeline top.
    def write_register(self, stage, register, value):
        self.write(self.top.addr(stage, register), value)

    def read_register(self, stage, register):
        return self.read(self.top.addr(stage, register))


class LinkBackend:
    """The :mod:`sim.driver` backend interface over a :class:`Link`: a plan's streams move in
    frames, interleaved (each stream task yields between frames); ``tick(n)`` sleeps ``n``
    cycles of ``clock_hz``."""

    def __init__(self, link, *, clock_hz=48e6, deadline=10.0):
        self.link, self.clock_hz, self.deadline = link, clock_hz, deadline

    async def tick(self, n=1):
        await asyncio.sleep(n / self.clock_hz)

    async def write(self, addr, value):
        self.link.write(addr, value)

    async def read(self, addr):
        return self.link.read(addr)

    async def send(self, port, beats, stalls, timeout=None):
        for _ in self.link.sending(port, beats, deadline=self.deadline):
            await asyncio.sleep(0)

    async def receive(self, port, count, stalls, timeout):
        got, last = [], time.monotonic()
        while len(got) < count and time.monotonic() - last < self.deadline:
            more = self.link.recv_some(port, count - len(got))
            got += more
            if more:
                last = time.monotonic()
            await asyncio.sleep(0)
        return got

    def ready(self, port):
        raise LinkError("the link cannot sample {!r}'s ready".format(port))


def run_plans(link, plans, *, check=None, clock_hz=48e6, deadline=10.0):
    """Run :class:`sim.driver.Plan` s one after the other over ``link``; returns their results
    (checked with :meth:`sim.driver.Plan.check` unless ``check[k]`` is false)."""
    from sim.driver import JobDriver
    check = [True] * len(plans) if check is None else check
    be = LinkBackend(link, clock_hz=clock_hz, deadline=deadline)

    async def run_one(plan):
        drv = JobDriver(link.top, plan, seed=0, stall=0)
        await drv.setup(be)
        tasks = [asyncio.ensure_future(fn(be)) for fn in drv.sources() + drv.sinks()]
        await asyncio.gather(*tasks)
        return await drv.finish(be)

    results = []
    for plan, chk in zip(plans, check):
        res = asyncio.run(run_one(plan))
        if chk:
            plan.check(link.top, res, 0)
        results.append(res)
    return results
