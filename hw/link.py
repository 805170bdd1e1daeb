"""The host link: framed commands over the UART, driving a pipeline top's registers and streams.

::

    rx -> UARTRx -> FrameReceiver -> [rx buffer] -> CommandExecutor -> [tx buffer] -> FrameSender
                                                       |     |                          -> UARTTx -> tx
                                                      csr  streams (the top's ports)

**Frames.** Host to chip: ``0xA5, seq, cmd, length (2 bytes, little-endian), payload (length
bytes), CRC (2 bytes, most significant first)``; chip to host: ``0x5A, seq, status, length
(2), payload, CRC``. The CRC is CRC-16/CCITT-FALSE (:func:`crc16`, Python's
``binascii.crc_hqx`` with initial value 0xFFFF) over every byte after the sync byte, so a
frame with its CRC appended checks to 0. ``seq`` is echoed: the host numbers its frames and
matches each response to its command. Every frame that starts with the sync byte gets exactly
one response; bytes between frames are ignored. The host sends a frame only after the response
to the previous one: bytes that arrive while a command runs are dropped.

**Commands** (:class:`Command`; multi-byte fields little-endian):

* ``WRITE``: ``(addr u16, value u32)`` pairs, written in order to the register port.
* ``READ``: ``addr u16`` words; the response holds one ``u32`` per address.
* ``SEND``: ``port u8`` then beats of that host-to-chip stream, ``bytes`` bytes each (the
  payload's bits, least significant byte first, :class:`LinkPorts`). The response holds the
  beats taken (``u16``); a beat not taken in ``timeout`` cycles ends the command with
  ``STALLED`` and the rest of the frame is dropped (a load into a running stage, or
  backpressure: the host retries what was not taken).
* ``RECV``: ``port u8, count u16``: up to ``count`` beats of a chip-to-host stream (at most what
  fits ``max_payload``); it stops early when no beat comes for ``timeout`` cycles. The response
  holds the beats received.
* ``INFO``: the response holds ``version, max_payload (u16), inputs, outputs`` and each port's
  beat bytes (inputs then outputs): the host checks its port map against the chip's.

**Status** (:class:`Status`): ``OK``; ``CRC`` (the frame's CRC did not check); ``TRUNCATED`` (no
byte for ``timeout`` cycles inside a frame); ``OVERSIZE`` (``length`` past ``max_payload``: the
frame is dropped until the line is quiet for ``timeout`` cycles); ``COMMAND`` (unknown);
``LENGTH`` (a payload length that does not fit the command); ``PORT`` (no such stream);
``STALLED`` (above). A bad frame has no effect but its response.

Throughput: the UART's (10 bit times a byte); a command adds 2 cycles per payload byte it
reads or writes, far below a byte time at any useful baud rate.
"""

import binascii
import enum

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, Value
from amaranth.lib import crc, data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from hw.arith import sum_tree
from hw.engine import RegisterSignature
from hw.uart import UARTRx, UARTTx

__all__ = ["SYNC_HOST", "SYNC_CHIP", "VERSION", "Command", "Status", "crc16", "payload_bits",
           "info_bytes", "frame_layout",
           "response_layout", "LinkPorts", "FrameReceiver", "FrameSender", "CommandExecutor",
           "HostLink", "Linked", "LinkedModel", "LinkedRunThrough", "LinkedPEArray",
           "SIM_DIVISOR", "SIM_TIMEOUT"]

SYNC_HOST, SYNC_CHIP = 0xA5, 0x5A
VERSION = 1
_CRC = crc.catalog.CRC16_CCITT_FALSE


class Command(enum.IntEnum):
    WRITE = 1
    READ = 2
    SEND = 3
    RECV = 4
    INFO = 5


class Status(enum.IntEnum):
    OK = 0
    CRC = 1
    TRUNCATED = 2
    OVERSIZE = 3
    COMMAND = 4
    LENGTH = 5
    PORT = 6
    STALLED = 7


def crc16(data_bytes):
    """The frames' CRC of ``data_bytes`` (CRC-16/CCITT-FALSE)."""
    return binascii.crc_hqx(bytes(data_bytes), 0xFFFF)


def payload_bits(layout):
    """Bits of a stream payload of ``layout`` (a ``lib.data`` layout or a shape); a beat crosses
    the link in ``ceil(bits / 8)`` bytes."""
    return data.Layout.cast(layout).size if isinstance(layout, data.Layout) \
        else Shape.cast(layout).width


def info_bytes(ports, max_payload):
    """INFO's response payload: version, ``max_payload`` (u16), the numbers of inputs and
    outputs, and each port's beat bytes (:class:`LinkPorts`), inputs then outputs."""
    return bytes([VERSION, max_payload & 0xFF, max_payload >> 8, len(ports.inputs),
                  len(ports.outputs)] + [b for _, _, b in ports.inputs + ports.outputs])


#: A received frame, from :class:`FrameReceiver` to :class:`CommandExecutor`.
frame_layout = data.StructLayout({"seq": 8, "cmd": 8, "length": 16, "status": 8})
#: A response, from :class:`CommandExecutor` to :class:`FrameSender`.
response_layout = data.StructLayout({"seq": 8, "status": 8, "length": 16})


def _write_signature(depth):
    return wiring.Signature({"addr": Out(range(depth)), "data": Out(8), "en": Out(1)})


def _read_signature(depth):
    """A synchronous read port: ``data`` is the byte at the previous cycle's ``addr``."""
    return wiring.Signature({"addr": Out(range(depth)), "data": In(8)})


class LinkPorts:
    """The streams of a component the link reaches: every ``lib.stream`` port but ``csr``, at
    any depth (``"qkv.w_load"``), host-to-chip (``inputs``) and chip-to-host (``outputs``), each
    numbered in signature order. A beat travels as its payload's bits in ``bytes`` bytes, least
    significant first."""

    def __init__(self, component):
        self.inputs, self.outputs = [], []         # (path, layout, bytes)
        self._walk(component.signature, (), False)
        if not self.inputs and not self.outputs:
            raise ValueError("{!r} has no stream ports for the link".format(component))

    def _walk(self, signature, path, flipped):
        for name, member in signature.members.items():
            if not member.is_signature or name == "csr":
                continue
            inward = (member.flow == In) != flipped
            sig = member.signature
            if isinstance(sig, stream.Signature):
                layout = sig.members["payload"].shape
                # A host-to-chip stream is an input of the component (In, or Out flipped).
                entry = (".".join(path + (name,)), layout, -(-payload_bits(layout) // 8))
                (self.inputs if inward else self.outputs).append(entry)
            else:
                self._walk(sig, path + (name,), inward)

    def input(self, path):
        return self._find(self.inputs, path, "host-to-chip")

    def output(self, path):
        return self._find(self.outputs, path, "chip-to-host")

    @staticmethod
    def _find(ports, path, what):
        for k, (p, layout, size) in enumerate(ports):
            if p == path:
                return k, layout, size
        raise ValueError("No {} stream {!r}; the link has {}".format(
            what, path, ", ".join(p for p, _, _ in ports)))


class FrameReceiver(wiring.Component):
    """Bytes to frames: checks the header, length and CRC, writes the payload into the rx
    buffer and offers the frame (with its status) on ``frame`` until the executor takes it (at
    the end of the command). Bytes that come while a frame waits are dropped."""

    def __init__(self, *, max_payload, timeout):
        self._max, self._timeout = max_payload, timeout
        super().__init__({"i": In(stream.Signature(8)),
                          "frame": Out(stream.Signature(frame_layout)),
                          "buf": Out(_write_signature(max_payload))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = check = _CRC(data_width=8).create()
        i, f = self.i, self.frame.payload
        byte = i.payload
        got = i.valid                               # i.ready is always 1
        count = Signal(16)
        idle = Signal(range(self._timeout + 1))     # cycles since the last byte
        m.d.comb += [i.ready.eq(1), check.data.eq(byte), self.buf.data.eq(byte),
                     self.buf.addr.eq(count)]
        with m.If(got):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self._timeout):
            m.d.sync += idle.eq(idle + 1)
        quiet = idle == self._timeout

        def field(name, nxt, **extra):
            with m.State(name):
                m.d.comb += check.valid.eq(got)
                with m.If(got):
                    for sig, value in extra.items():
                        m.d.sync += getattr(f, sig).eq(value)
                    m.next = nxt
                with m.Elif(quiet):
                    m.d.sync += f.status.eq(Status.TRUNCATED)
                    m.next = "Emit"

        with m.FSM():
            with m.State("Sync"):
                m.d.comb += check.start.eq(1)
                with m.If(got & (byte == SYNC_HOST)):
                    m.d.sync += [f.status.eq(Status.OK), count.eq(0)]
                    m.next = "Seq"
            field("Seq", "Cmd", seq=byte)
            field("Cmd", "LenLo", cmd=byte)
            field("LenLo", "LenHi", length=byte)
            with m.State("LenHi"):
                m.d.comb += check.valid.eq(got)
                length = Signal(16)
                m.d.comb += length.eq(f.length[:8] | (byte << 8))
                with m.If(got):
                    m.d.sync += f.length.eq(length)
                    with m.If(length > self._max):
                        m.d.sync += f.status.eq(Status.OVERSIZE)
                        m.next = "Discard"
                    with m.Elif(length == 0):
                        m.next = "CrcHi"
                    with m.Else():
                        m.next = "Payload"
                with m.Elif(quiet):
                    m.d.sync += f.status.eq(Status.TRUNCATED)
                    m.next = "Emit"
            with m.State("Payload"):
                m.d.comb += [check.valid.eq(got), self.buf.en.eq(got)]
                with m.If(got):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == f.length - 1):
                        m.next = "CrcHi"
                with m.Elif(quiet):
                    m.d.sync += f.status.eq(Status.TRUNCATED)
                    m.next = "Emit"
            field("CrcHi", "CrcLo")
            field("CrcLo", "Check")
            with m.State("Check"):                  # the CRC register holds the last byte now
                with m.If(~check.match_detected):
                    m.d.sync += f.status.eq(Status.CRC)
                m.next = "Emit"
            with m.State("Discard"):
                with m.If(quiet):
                    m.next = "Emit"
            with m.State("Emit"):
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    m.next = "Sync"
        return m


class FrameSender(wiring.Component):
    """Responses to bytes: sync, header, the payload from the tx buffer, CRC; ``response`` is
    taken once its last byte has left."""

    def __init__(self, *, max_payload):
        super().__init__({"response": In(stream.Signature(response_layout)),
                          "buf": Out(_read_signature(max_payload)),
                          "o": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = gen = _CRC(data_width=8).create()
        r, o = self.response.payload, self.o
        count = Signal(16)
        sent = o.valid & o.ready
        # The CRC takes each byte a cycle after it is sent, from a register: the byte's
        # selection by state in front of the CRC's XOR trees was the iCE40 link build's
        # critical path (34.0 ns). The CRC's bytes follow at least one cycle (Fetch) later.
        feed = Signal()
        crc_byte, crc_take = Signal(8), Signal()
        m.d.sync += [crc_byte.eq(o.payload), crc_take.eq(feed)]
        m.d.comb += [gen.data.eq(crc_byte), gen.valid.eq(crc_take), self.buf.addr.eq(count)]

        def byte(name, value, nxt, *, crc=True):
            with m.State(name):
                m.d.comb += [o.valid.eq(1), o.payload.eq(value), feed.eq(sent & crc)]
                with m.If(sent):
                    m.next = nxt

        with m.FSM():
            with m.State("Idle"):
                m.d.comb += gen.start.eq(1)
                with m.If(self.response.valid):
                    m.d.sync += count.eq(0)
                    m.next = "Sync"
            byte("Sync", SYNC_CHIP, "Seq", crc=False)
            byte("Seq", r.seq, "Status")
            byte("Status", r.status, "LenLo")
            byte("LenLo", r.length[:8], "LenHi")
            byte("LenHi", r.length[8:], "Fetch")
            with m.State("Fetch"):                  # the buffer reads count this cycle
                with m.If(count == r.length):
                    m.next = "CrcHi"
                with m.Else():
                    m.next = "Payload"
            with m.State("Payload"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(self.buf.data), feed.eq(sent),
                             self.buf.addr.eq(count)]
                with m.If(sent):
                    m.d.sync += count.eq(count + 1)
                    m.next = "Fetch"
            byte("CrcHi", gen.crc[8:], "CrcLo", crc=False)
            byte("CrcLo", gen.crc[:8], "Done", crc=False)
            with m.State("Done"):
                m.d.comb += self.response.ready.eq(1)
                m.next = "Idle"
        return m


class CommandExecutor(wiring.Component):
    """Runs one frame's command (module docstring): reads its payload from the rx buffer,
    drives the register port and the streams, writes the response payload into the tx buffer,
    then offers the response and, once it has been sent, takes the frame.

    Attributes
    ----------
    frame : ``In(stream)`` of :data:`frame_layout`; rx, tx: the buffers' ports.
    response : ``Out(stream)`` of :data:`response_layout`.
    csr : ``Out(RegisterSignature)``: the top's register port.
    in<k>, out<k> : the streams of :class:`LinkPorts` (``8 * bytes``-bit payloads).
    """

    def __init__(self, ports, *, addr_bits, max_payload, timeout):
        self._ports, self._max, self._timeout = ports, max_payload, timeout
        members = {"frame": In(stream.Signature(frame_layout)),
                   "rx": Out(_read_signature(max_payload)),
                   "tx": Out(_write_signature(max_payload)),
                   "response": Out(stream.Signature(response_layout)),
                   "csr": Out(RegisterSignature(addr_bits))}
        for k, (_, _, size) in enumerate(ports.inputs):
            members["in{}".format(k)] = Out(stream.Signature(8 * size))
        for k, (_, _, size) in enumerate(ports.outputs):
            members["out{}".format(k)] = In(stream.Signature(8 * size))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ports = self._ports
        sizes = [b for _, _, b in ports.inputs + ports.outputs]
        f = self.frame.payload
        s = _ExecState(max(sizes + [6]), len(info_bytes(ports, self._max)), self._timeout)
        m.d.comb += [self.rx.addr.eq(s.ptr), self.tx.addr.eq(s.optr),
                     self.csr.addr.eq(s.word[:16]), self.csr.w_data.eq(s.word[16:48])]
        self._streams(m, s)
        # The selected port's beat size (and a RECV's cap), outside the state machine: set in
        # a state, a size is 0 in the others and the state decode leads its adders.
        s.in_size = s.size_of(m, s.port, [b for _, _, b in ports.inputs], "in_size")
        s.out_size = s.size_of(m, s.port, [b for _, _, b in ports.outputs], "out_size")
        s.out_cap = s.size_of(m, s.port, [self._max // b for _, _, b in ports.outputs],
                                "out_cap")
        with m.FSM():
            with m.State("Idle"):
                with m.If(self.frame.valid):
                    m.d.sync += [s.ptr.eq(0), s.optr.eq(0), s.beats.eq(0), s.status.eq(f.status),
                                 s.at_end.eq(f.length == 0), s.bad.eq(self._bad_length(f))]
                    m.next = "Dispatch"
            with m.State("Dispatch"):
                self._dispatch(m, s, f)
            self._write(m, s, f)
            self._read(m, s, f)
            self._send(m, s, f)
            self._recv(m, s)
            self._info(m, s)
            with m.State("Respond"):
                m.d.comb += [self.response.valid.eq(1), self.response.payload.seq.eq(f.seq),
                             self.response.payload.status.eq(s.status),
                             self.response.payload.length.eq(s.optr)]
                with m.If(self.response.ready):
                    m.d.comb += self.frame.ready.eq(1)
                    m.next = "Idle"
            # Last: their returns go to every state the others named.
            self._fetch(m, s, f)
            self._put(m, s)
        return m

    def _bad_length(self, f):
        """A payload length that does not fit the frame's command. Computed as the frame
        arrives and registered (``s.bad``): the length compares in front of the state machine's
        next-state logic were the iCEBreaker link build's critical path (43.4 ns)."""
        n = f.length
        return Mux(f.cmd == Command.WRITE, ~_multiple_of_six(n),
               Mux(f.cmd == Command.READ, n[0] | (n > self._max // 2),
               Mux(f.cmd == Command.SEND, n == 0,
               Mux(f.cmd == Command.RECV, n != 3,
               Mux(f.cmd == Command.INFO, n != 0, 0)))))

    def _dispatch(self, m, s, f):
        with m.If(s.status != Status.OK):
            m.next = "Respond"
        with m.Elif(s.bad):
            m.d.sync += s.status.eq(Status.LENGTH)
            m.next = "Respond"
        with m.Else():
            with m.Switch(f.cmd):
                with m.Case(Command.WRITE):
                    s.then(m, "Fetch", 6, "W_do", when=~s.at_end, otherwise="Respond")
                with m.Case(Command.READ):
                    s.then(m, "Fetch", 2, "R_addr", when=~s.at_end, otherwise="Respond")
                with m.Case(Command.SEND):
                    s.then(m, "Fetch", 1, "S_port")
                with m.Case(Command.RECV):
                    s.then(m, "Fetch", 3, "V_port")
                with m.Case(Command.INFO):
                    m.d.sync += s.k.eq(0)
                    m.next = "I_put"
                with m.Default():
                    m.d.sync += s.status.eq(Status.COMMAND)
                    m.next = "Respond"

    def _fetch(self, m, s, f):
        """Fetch: ``s.need`` bytes from the rx buffer into ``s.word``, two cycles each (address,
        then data), then ``s.after``."""
        with m.State("Fetch"):
            m.next = "Fetch_take"
        with m.State("Fetch_take"):
            m.d.sync += [s.word.word_select(s.k, 8).eq(self.rx.data), s.ptr.eq(s.ptr + 1),
                         s.at_end.eq(s.ptr + 1 == f.length), s.k.eq(s.k + 1)]
            with m.If(s.k == s.need - 1):
                m.d.sync += s.k.eq(0)
                s.resume(m)
            with m.Else():
                m.next = "Fetch"

    def _put(self, m, s):
        """Put: ``s.need`` bytes of ``s.value`` into the tx buffer, then ``s.after``."""
        with m.State("Put"):
            m.d.comb += [self.tx.en.eq(1), self.tx.data.eq(s.value.word_select(s.k, 8))]
            m.d.sync += [s.optr.eq(s.optr + 1), s.k.eq(s.k + 1)]
            with m.If(s.k == s.need - 1):
                m.d.sync += s.k.eq(0)
                s.resume(m)

    def _write(self, m, s, f):
        with m.State("W_do"):
            m.d.comb += self.csr.w_en.eq(1)
            s.then(m, "Fetch", 6, "W_do", when=~s.at_end, otherwise="Respond")

    def _read(self, m, s, f):
        with m.State("R_addr"):                     # csr.addr = word[:16] from now on
            m.next = "R_data"
        with m.State("R_data"):                     # r_data shows the register now
            m.d.sync += s.value.eq(self.csr.r_data)
            s.then(m, "Put", 4, "R_next")
        with m.State("R_next"):
            s.then(m, "Fetch", 2, "R_addr", when=~s.at_end, otherwise="Respond")

    def _send(self, m, s, f):
        ports = self._ports.inputs
        with m.State("S_port"):
            # count: the payload bytes a whole number of beats after the port byte would take;
            # its compares with the length are registered (fit, over) like at_end.
            # wait restarts: a RECV that timed out leaves it at the timeout.
            m.d.sync += [s.port.eq(s.word[:8]), s.count.eq(1), s.fit.eq(f.length == 1),
                         s.over.eq(0), s.wait.eq(0)]
            with m.If(s.word[:8] >= len(ports)):
                m.d.sync += s.status.eq(Status.PORT)
                m.next = "Respond"
            with m.Else():
                m.next = "S_check"
        with m.State("S_check"):                    # length - 1 a multiple of the beat size?
            size = s.in_size
            with m.If(s.fit):
                s.then(m, "Fetch", size, "S_offer", when=~s.at_end, otherwise="S_done")
            with m.Elif(s.over):
                m.d.sync += s.status.eq(Status.LENGTH)
                m.next = "Respond"
            with m.Else():
                nxt = s.count + size
                m.d.sync += [s.count.eq(nxt), s.fit.eq(nxt == f.length),
                             s.over.eq(nxt > f.length)]
        with m.State("S_offer"):
            # Only the state register sees the top's ready (taken): the beat is counted and
            # the next one fetched a cycle later, in S_took. Through the executor's counters
            # and subroutine registers, the top's input logic (the attention engine's
            # sub-vector decoder, the delta encoder's packer) was the ULX3S run-through's
            # slowest path (26.7 ns by boards.timing). No beat is offered in the cycle that
            # times out, so a beat is never both taken and STALLED.
            expired = s.wait == self._timeout
            m.d.comb += s.offer.eq(~expired)
            with m.If(expired):
                m.d.sync += [s.status.eq(Status.STALLED), s.wait.eq(0)]
                m.next = "S_done"
            with m.Else():
                m.d.sync += s.wait.eq(s.wait + 1)
                with m.If(s.taken):
                    m.next = "S_took"
        with m.State("S_took"):
            m.d.sync += [s.beats.eq(s.beats + 1), s.wait.eq(0)]
            s.then(m, "Fetch", s.in_size, "S_offer", when=~s.at_end, otherwise="S_done")
        with m.State("S_done"):
            m.d.sync += s.value.eq(s.beats)
            s.then(m, "Put", 2, "Respond")

    def _recv(self, m, s):
        ports = self._ports.outputs
        with m.State("V_port"):
            m.d.sync += [s.port.eq(s.word[:8]), s.count.eq(s.word[8:24]), s.wait.eq(0)]
            with m.If(s.word[:8] >= len(ports)):
                m.d.sync += s.status.eq(Status.PORT)
                m.next = "Respond"
            with m.Else():
                m.next = "V_clamp"
        with m.State("V_clamp"):
            count = Mux(s.count > s.out_cap, s.out_cap, s.count)
            m.d.sync += [s.count.eq(count), s.got_all.eq(count == 0)]
            m.next = "V_wait"
        with m.State("V_wait"):
            # got_all (beats == count) is registered: accept reaches the top's output logic.
            with m.If(s.got_all):
                m.next = "Respond"
            with m.Elif(s.arrived):
                m.d.comb += s.accept.eq(1)
                m.d.sync += [s.value.eq(s.incoming), s.beats.eq(s.beats + 1), s.wait.eq(0),
                             s.got_all.eq(s.beats + 1 == s.count)]
                s.then(m, "Put", s.out_size, "V_wait")
            with m.Elif(s.wait == self._timeout):
                m.next = "Respond"
            with m.Else():
                m.d.sync += s.wait.eq(s.wait + 1)

    def _info(self, m, s):
        info = info_bytes(self._ports, self._max)
        with m.State("I_put"):
            m.d.comb += self.tx.en.eq(1)
            with m.Switch(s.k):
                for k, v in enumerate(info):
                    with m.Case(k):
                        m.d.comb += self.tx.data.eq(v)
            m.d.sync += [s.optr.eq(s.optr + 1), s.k.eq(s.k + 1)]
            with m.If(s.k == len(info) - 1):
                m.d.sync += s.k.eq(0)
                m.next = "Respond"

    def _streams(self, m, s):
        """The selected stream: ``s.offer`` drives input ``s.port`` with ``s.word``;
        ``s.arrived``/``s.incoming`` show output ``s.port``, ``s.accept`` takes its beat."""
        for k, (_, _, size) in enumerate(self._ports.inputs):
            port = getattr(self, "in{}".format(k))
            m.d.comb += [port.valid.eq(s.offer & (s.port == k)),
                         port.payload.eq(s.word[:8 * size])]
            with m.If(s.port == k):
                m.d.comb += s.taken.eq(port.valid & port.ready)
        for k, _ in enumerate(self._ports.outputs):
            port = getattr(self, "out{}".format(k))
            m.d.comb += port.ready.eq(s.accept & (s.port == k))
            with m.If(s.port == k):
                m.d.comb += [s.arrived.eq(port.valid), s.incoming.eq(port.payload)]


class _ExecState:
    """The executor's registers, and the Fetch / Put subroutines' return address."""

    def __init__(self, max_bytes, info_bytes, timeout):
        self.ptr = Signal(16)                      # next rx buffer byte
        self.optr = Signal(16)                     # next tx buffer byte (= response length)
        self.word = Signal(8 * max_bytes)          # fetched bytes, first at the bottom
        self.value = Signal(8 * max_bytes)         # bytes to put
        self.k = Signal(range(max(max_bytes, info_bytes) + 1))     # a byte of Fetch/Put/INFO
        self.need = Signal(range(max_bytes + 1))
        self.status = Signal(8)
        self.bad = Signal()                        # the frame's length does not fit its command
        self.at_end = Signal()                     # ptr == the frame's length (registered)
        self.fit = Signal()                        # count == the frame's length (SEND)
        self.over = Signal()                       # count > the frame's length (SEND)
        self.got_all = Signal()                    # beats == count (RECV)
        self.port = Signal(8)
        self.count = Signal(16)
        self.beats = Signal(16)
        self.wait = Signal(range(timeout + 1))
        self.offer = Signal()
        self.taken = Signal()
        self.arrived = Signal()
        self.accept = Signal()
        self.incoming = Signal(8 * max_bytes)
        self._after = {}                           # return state name -> code
        self.after = Signal(8)

    def _code(self, name):
        return self._after.setdefault(name, len(self._after))

    def then(self, m, sub, need, after, *, when=None, otherwise=None):
        """Go to subroutine ``sub`` (``"Fetch"`` or ``"Put"``) for ``need`` bytes, returning
        to ``after``; with ``when``, only if it holds (else to ``otherwise``, if given)."""
        def go():
            # Fetch does not clear `word`: every reader takes only the bytes it fetched.
            m.d.sync += [self.need.eq(need), self.after.eq(self._code(after))]
            m.next = sub
        if when is None:
            go()
            return
        with m.If(when):
            go()
        if otherwise is not None:
            with m.Else():
                m.next = otherwise

    def resume(self, m):
        """Return from a subroutine (to the state its caller named)."""
        with m.Switch(self.after):
            for name, code in self._after.items():
                with m.Case(code):
                    m.next = name

    def size_of(self, m, port, sizes, name):
        """``sizes[port]`` as a value."""
        value = Signal(range(max(sizes, default=0) + 1), name=name)
        with m.Switch(port):
            for k, v in enumerate(sizes):
                with m.Case(k):
                    m.d.comb += value.eq(v)
        return value


class HostLink(wiring.Component):
    """A pipeline top behind the UART link: ``rx`` and ``tx`` are all it shows.

    Parameters
    ----------
    top : wiring.Component
        With stream ports (:class:`LinkPorts`) and usually ``csr``
        (``In(RegisterSignature)``); without registers (the PE array alone) ``READ`` reads 0
        and ``WRITE`` does nothing.
    divisor : int
        Clock cycles per bit (:mod:`hw.uart`).
    max_payload : int
        Bytes of a frame's payload (each of the two buffers).
    timeout : int
        Cycles of silence that end a frame (``TRUNCATED``), of a stream that does not move
        (``STALLED``, the end of a ``RECV``).
    """

    def __init__(self, top, *, divisor, max_payload=1024, timeout=(1 << 20) - 1):
        for what, v, lo, hi in (("max_payload", max_payload, 8, (1 << 16) - 1),
                                ("timeout", timeout, 16, (1 << 32) - 1)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                self._MustUse__silence = True
                raise ValueError("{} must be an integer in {} .. {}, not {!r}"
                                 .format(what, lo, hi, v))
        self.top, self.ports = top, LinkPorts(top)
        self.divisor, self.max_payload, self.timeout = divisor, max_payload, timeout
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        top, n = self.top, self.max_payload
        m.submodules.top = top
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.receiver = rcv = FrameReceiver(max_payload=n, timeout=self.timeout)
        m.submodules.sender = snd = FrameSender(max_payload=n)
        has_csr = "csr" in top.signature.members
        addr_bits = len(top.csr.addr) if has_csr else 1
        m.submodules.executor = ex = CommandExecutor(self.ports, addr_bits=addr_bits,
                                                     max_payload=n, timeout=self.timeout)
        m.submodules.rx_buf = rx_mem = Memory(shape=8, depth=n, init=[])
        m.submodules.tx_buf = tx_mem = Memory(shape=8, depth=n, init=[])
        for mem, w, r in ((rx_mem, rcv.buf, ex.rx), (tx_mem, ex.tx, snd.buf)):
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(w.addr), wp.data.eq(w.data), wp.en.eq(w.en),
                         rp.addr.eq(r.addr), r.data.eq(rp.data)]
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        connect(m, urx.o, rcv.i)
        connect(m, rcv.frame, ex.frame)
        connect(m, ex.response, snd.response)
        connect(m, snd.o, utx.i)
        if has_csr:
            connect(m, ex.csr, top.csr)
        for k, (path, _, _) in enumerate(self.ports.inputs):
            port, mine = _port(top, path), getattr(ex, "in{}".format(k))
            m.d.comb += [port.valid.eq(mine.valid), mine.ready.eq(port.ready),
                         port.payload.eq(mine.payload[:len(Value.cast(port.payload))])]
        for k, (path, _, _) in enumerate(self.ports.outputs):
            port, mine = _port(top, path), getattr(ex, "out{}".format(k))
            m.d.comb += [mine.valid.eq(port.valid), port.ready.eq(mine.ready),
                         mine.payload.eq(Value.cast(port.payload))]
        return m


def _multiple_of_six(n):
    """``n % 6 == 0`` as a shallow circuit: Yosys builds ``n % 6`` as a divider, whose
    113 ns of carry chains were the iCEBreaker link build's critical path (8.8 MHz). ``n`` is
    even and ``n / 2`` a multiple of 3; as 4 = 1 (mod 3), ``n / 2`` is congruent to the sum of
    its base-4 digits, at most 3 per digit."""
    h = n[1:]
    total = sum_tree(h[i:i + 2] for i in range(0, len(h), 2))
    top = 3 * -(-len(h) // 2)
    return ~n[0] & Cat(*[total == k for k in range(0, top + 1, 3)]).any()


def _port(top, path):
    obj = top
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


#: Bit time of the simulated link (the UART's smallest divisor), and its timeout in cycles.
SIM_DIVISOR, SIM_TIMEOUT = 4, 2047


class Linked(HostLink):
    """The design called :attr:`design` (:data:`hw.designs.DESIGNS`) behind the link: what a
    board holds (``divisor`` and ``timeout`` for the board's clock; the defaults are the
    simulation's)."""

    design = None

    def __init__(self, config, *, divisor=SIM_DIVISOR, max_payload=1024, timeout=SIM_TIMEOUT):
        from hw.designs import design_class
        super().__init__(design_class(self.design)(config), divisor=divisor,
                         max_payload=max_payload, timeout=timeout)


class LinkedModel(Linked):
    """The whole model (:class:`hw.model.Model`) behind the link."""
    design = "model"


class LinkedRunThrough(Linked):
    """The run-through (:class:`hw.run_through.RunThrough`: the QKV projection and sparse
    attention on one PE array) behind the link: the part of the model a ULX3S holds."""
    design = "run_through"


class LinkedPEArray(Linked):
    """The PE array alone (:class:`hw.pe_array.PEArray`) behind the link: operand beats in,
    result rows out; the part an iCEBreaker holds."""
    design = "pe_array"
