"""Host side of the link protocol: CRC, frames, the retrying client, transports.

Pure Python and fast: the board is ``host.protocol.DeviceModel`` (the Python twin of
``hw.link.LinkEngine``), reached in-process, over a pseudo-terminal or over TCP,
optionally behind a fault injector that drops, corrupts, truncates and delays
frames in both directions.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from host.protocol import (
    MAGIC, SYNC, VERSION, Cmd, DeviceModel, Link, LinkCounters, LinkError, Status, crc16, decode_reply,
    decode_request, encode_reply, encode_request,
)
from host.transport import InProcessTransport, SerialTransport, SocketTransport, TransportError, open_transport


# ------------------------------------------------------------------ CRC

def _crc16_bitwise(data: bytes) -> int:
    """Independent bit-serial CRC-16/CCITT-FALSE (shift register, MSB first)."""
    crc = 0xFFFF
    for byte in data:
        for i in range(7, -1, -1):
            fb = ((crc >> 15) ^ (byte >> i)) & 1
            crc = ((crc << 1) & 0xFFFF) ^ (0x1021 if fb else 0)
    return crc


@pytest.mark.parametrize("data, crc", [
    (b"123456789", 0x29B1),   # the catalogue check value of CRC-16/CCITT-FALSE (IBM-3740)
    (b"", 0xFFFF),
    (b"A", 0xB915),
    (b"\x00", 0xE1F0),
    (bytes(256 * [0xFF]), _crc16_bitwise(bytes(256 * [0xFF]))),
])
def test_crc16_known_answers(data, crc):
    assert crc16(data) == crc
    assert _crc16_bitwise(data) == crc


def test_crc16_residue_and_chaining():
    rng = random.Random(5)
    for _ in range(50):
        msg = rng.randbytes(rng.randint(0, 100))
        c = crc16(msg)
        assert c == _crc16_bitwise(msg)
        assert crc16(msg + c.to_bytes(2, "big")) == 0          # what the gateware checks
        cut = rng.randint(0, len(msg))
        assert crc16(msg[cut:], crc16(msg[:cut])) == c


# ------------------------------------------------------------------ frames

def test_request_layout_byte_by_byte():
    f = encode_request(Cmd.WRITE, 0x17, 0x0000_1234, 2, [0xDDCC_BBAA, 0x1122_3344])
    assert f[:2] == SYNC
    assert f[2] == 0x50 and f[3] == 0x17
    assert f[4:8] == bytes([0x34, 0x12, 0, 0])                # ADDR little-endian
    assert f[8:10] == bytes([2, 0])                           # COUNT little-endian
    assert f[10:18] == bytes([0xAA, 0xBB, 0xCC, 0xDD, 0x44, 0x33, 0x22, 0x11])
    assert int.from_bytes(f[18:], "big") == crc16(f[2:18])    # CRC high byte first
    assert len(encode_request(Cmd.READ, 0, 0, 200)) == 12     # no payload for READ


def test_frame_round_trip():
    rng = random.Random(1)
    for _ in range(200):
        cmd = rng.choice(list(Cmd))
        n = rng.randint(0, 300)
        words = [rng.getrandbits(32) for _ in range(n)]
        payload = words if cmd & 0x40 else []
        seq, addr = rng.randrange(256), rng.getrandbits(32)
        req = decode_request(encode_request(cmd, seq, addr, n, payload))
        assert (req.cmd, req.seq, req.addr, req.count, list(req.payload)) == (cmd, seq, addr, n, payload)
        status = rng.choice(list(Status))
        rep = decode_reply(encode_reply(cmd, seq, words, status))
        assert (rep.cmd, rep.seq, list(rep.words), rep.status) == (cmd, seq, words, status)


def test_frame_errors():
    with pytest.raises(ValueError, match="payload"):
        encode_request(Cmd.WRITE, 0, 0, 2, [1])
    with pytest.raises(ValueError, match="no payload"):
        encode_request(Cmd.READ, 0, 0, 1, [1])
    with pytest.raises(ValueError, match="32 unsigned"):
        encode_request(Cmd.WRITE, 0, 0, 1, [1 << 32])
    with pytest.raises(ValueError, match="sequence"):
        encode_request(Cmd.PING, 256)
    f = bytearray(encode_reply(Cmd.READ, 3, [1, 2]))
    f[7] ^= 1
    with pytest.raises(ValueError, match="CRC"):
        decode_reply(bytes(f))
    with pytest.raises(ValueError, match="length"):
        decode_reply(encode_reply(Cmd.READ, 3, [1, 2])[:-1])


# ------------------------------------------------------------------ client on a perfect model

def _link(device: DeviceModel, **kw) -> Link:
    return Link(InProcessTransport(device.feed, on_timeout=device.line_idle), **kw)


def test_ping_write_read_status():
    dev = DeviceModel(max_words=16, ident=0xFEEDBEEF)
    link = _link(dev, seed=0)
    info = link.ping()
    assert (info.version, info.max_words, info.ident) == (VERSION, 16, 0xFEEDBEEF)
    data = list(range(1000, 1100))
    link.write(0x40, data, progress=True)                     # 7 frames of <= 16 words
    assert link.read(0x40, 100, progress=True) == data
    assert link.read(0x40 + 99, 1) == [1099]
    link.write(7, [1, 2, 3], increment=False)
    assert dev.mem[7] == 3 and link.read(7, 4, increment=False) == [3] * 4
    c = link.status()
    assert isinstance(c, LinkCounters) and c.frames_ok == 1 + 7 + 7 + 1 + 1 + 1 + 1
    assert c.bad_crc == c.dup_writes == 0
    assert link.stats["retries"] == 0
    link.write(5, [])                                          # nothing to send
    assert link.read(5, 0) == []


def test_argument_errors():
    link = _link(DeviceModel())
    with pytest.raises(ValueError):
        link.write(0, [-1])
    with pytest.raises(ValueError):
        link.read(0xFFFF_FFFF, 2)
    with pytest.raises(ValueError):
        Link(InProcessTransport(lambda d: b""), timeout=0)


def test_deterministic_naks_raise_at_once():
    dev = DeviceModel(read_hook=lambda a: None, write_hook=lambda a, w: False)
    link = _link(dev, retries=5)
    with pytest.raises(LinkError, match="BUS_TIMEOUT") as exc:
        link.read(0, 4)
    assert "\n" not in str(exc.value) and "READ @0x00000000" in str(exc.value)
    with pytest.raises(LinkError, match="BUS_TIMEOUT"):
        link.write(0, [1])
    assert link.stats["retries"] == 0
    link2 = _link(DeviceModel(), max_words=300)             # more than the board takes
    with pytest.raises(LinkError, match="BAD_LENGTH"):
        link2.write(0, list(range(300)))


def test_not_a_board():
    junk = InProcessTransport(lambda d: encode_reply(Cmd.PING, d[3], [0x12345678, 1, 0]))
    with pytest.raises(LinkError, match="not a shiftfpga link"):
        Link(junk).ping()


def test_dead_device_times_out():
    t0 = time.monotonic()
    link = Link(InProcessTransport(lambda d: b""), retries=2)
    with pytest.raises(LinkError) as exc:
        link.read(0, 1)
    assert "no valid reply after 3 attempts" in str(exc.value) and "\n" not in str(exc.value)
    assert time.monotonic() - t0 < 1.0


# ------------------------------------------------------------------ faults

class FaultyLine:
    """DeviceModel behind a line that drops, corrupts, truncates and pads frames.

    ``rates`` gives the probability per frame of each fault; faults are drawn
    from a seeded generator so that a failure reproduces."""

    def __init__(self, dev: DeviceModel, rng: random.Random, rate: float):
        self.dev, self.rng, self.rate = dev, rng, rate
        self.faults: dict[str, int] = {}
        self.stale = b""

    def _hit(self, name: str) -> bool:
        if self.rng.random() < self.rate:
            self.faults[name] = self.faults.get(name, 0) + 1
            return True
        return False

    def handle(self, frame: bytes) -> bytes:
        rng = self.rng
        if self._hit("drop request"):
            return b""
        if self._hit("corrupt request"):
            frame = bytearray(frame)
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            frame = bytes(frame)
        if self._hit("truncate request"):
            frame = frame[:rng.randrange(len(frame))]
        if self._hit("noise before request"):
            frame = rng.randbytes(rng.randint(1, 20)) + frame
        reply = self.dev.feed(frame)
        if not reply:
            return b""
        if self._hit("drop reply"):
            return b""
        if self._hit("corrupt reply"):
            reply = bytearray(reply)
            reply[rng.randrange(len(reply))] ^= 1 << rng.randrange(8)
            reply = bytes(reply)
        if self._hit("truncate reply"):
            reply = reply[:rng.randrange(len(reply))]
        if self._hit("noise before reply"):
            reply = rng.randbytes(rng.randint(1, 20)) + reply
        if self._hit("stale reply first") and self.stale:
            reply = self.stale + reply
        self.stale = reply
        return reply


@pytest.mark.parametrize("seed", range(6))
def test_retries_survive_faults(seed):
    """Under heavy line faults every transfer completes, the memory is right, and each
    WRITE frame reached the bus exactly once (lost replies are answered from the
    duplicate memory, not by writing again)."""
    rng = random.Random(seed)
    dev = DeviceModel(max_words=8)
    line = FaultyLine(dev, rng, rate=0.06)
    link = Link(InProcessTransport(line.handle, on_timeout=dev.line_idle), retries=12, seed=seed)
    mirror: dict[int, int] = {}
    chunks = 0
    for _ in range(60):
        n = rng.randint(1, 20)
        addr = rng.randrange(100)
        words = [rng.getrandbits(32) for _ in range(n)]
        link.write(addr, words)
        chunks += -(-n // 8)
        mirror.update(zip(range(addr, addr + n), words))
        m = rng.randint(1, 20)
        raddr = rng.randrange(100)
        assert link.read(raddr, m) == [mirror.get(a, 0) for a in range(raddr, raddr + m)]
    writes = [r for r in dev.executed if r.cmd == Cmd.WRITE]
    assert len(writes) == chunks, (len(writes), chunks, line.faults)
    assert link.stats["retries"] > 0 and sum(line.faults.values()) > 20, line.faults
    assert dev.counters["dup_writes"] > 0 or line.faults.get("drop reply", 0) == 0


def test_lost_reply_is_not_written_twice():
    dev = DeviceModel()
    drop = {"next": False}

    def handle(frame):
        reply = dev.feed(frame)
        if drop["next"]:
            drop["next"] = False
            return b""
        return reply

    link = Link(InProcessTransport(handle), retries=2)
    link.ping()
    drop["next"] = True
    link.write(10, [42])
    assert len([r for r in dev.executed if r.cmd == Cmd.WRITE]) == 1
    assert dev.counters["dup_writes"] == 1 and link.stats["retries"] == 1


def test_new_session_is_not_a_retry():
    """Two Links (sessions) writing the same frame with the same sequence number: the
    PING that opens the second session clears the duplicate memory."""
    dev = DeviceModel()
    for _ in range(2):
        link = Link(InProcessTransport(dev.feed), seed=7)
        link.write(3, [5])
    assert len([r for r in dev.executed if r.cmd == Cmd.WRITE]) == 2


# ------------------------------------------------------------------ real transports

def _serve_pty(master: int, dev: DeviceModel, stop: threading.Event, drop: list[int]):
    """Answer on the pty master; the replies whose numbers are in ``drop`` are lost."""
    count = 0
    while not stop.is_set():
        try:
            data = os.read(master, 4096)
        except OSError:
            return
        reply = dev.feed(data)
        if reply:
            count += 1
            if count not in drop:
                os.write(master, reply)


def test_serial_transport_over_pty():
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    dev = DeviceModel(max_words=32)
    stop = threading.Event()
    thread = threading.Thread(target=_serve_pty, args=(master, dev, stop, [3]), daemon=True)
    thread.start()
    try:
        with Link(SerialTransport(os.ttyname(slave), 3_000_000), timeout=0.1) as link:
            assert link.ping().max_words == 32
            data = list(range(100))
            link.write(0, data)                    # the reply to its 2nd frame is lost
            assert link.read(0, 100) == data
            assert link.stats["retries"] == 1 and dev.counters["dup_writes"] == 1
    finally:
        stop.set()
        os.close(slave)
        os.close(master)


def test_missing_serial_port():
    with pytest.raises(TransportError) as exc:
        SerialTransport("/dev/does-not-exist-ttyUSB9")
    msg = str(exc.value)
    assert msg.startswith("cannot open serial port /dev/does-not-exist-ttyUSB9") and "\n" not in msg
    with pytest.raises(LinkError):                             # TransportError is a LinkError
        open_transport("/dev/does-not-exist-ttyUSB9")


def _tcp_board(handler):
    """A TCP 'board' on 127.0.0.1: handler(bytes) -> bytes per received chunk."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def run():
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                out = handler(data)
                if out:
                    conn.sendall(out)

    threading.Thread(target=run, daemon=True).start()
    return server, port


def test_socket_transport():
    dev = DeviceModel(max_words=64)
    server, port = _tcp_board(dev.feed)   # TCP may split frames: the model takes any chunking
    try:
        with Link(open_transport(f"tcp://127.0.0.1:{port}"), timeout=0.5) as link:
            words = [random.getrandbits(32) for _ in range(300)]
            link.write(1000, words)
            assert link.read(1000, 300) == words
            assert link.status().frames_ok == 1 + 5 + 5 + 1
    finally:
        server.close()


def test_socket_silent_board_never_hangs():
    server, port = _tcp_board(lambda data: b"")
    try:
        link = Link(SocketTransport("127.0.0.1", port), timeout=0.05, retries=2)
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="no valid reply after 3 attempts"):
            link.ping()
        assert time.monotonic() - t0 < 1.0
    finally:
        server.close()


def test_socket_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}"):
        open_transport(f"tcp://127.0.0.1:{port}")
    with pytest.raises(TransportError, match="tcp://HOST:PORT"):
        open_transport("tcp://nowhere")


def test_ping_word_layout():
    rep = decode_reply(DeviceModel(max_words=100, ident=9).feed(encode_request(Cmd.PING, 1)))
    assert rep.words == ((MAGIC << 16) | VERSION, 100, 9) and rep.status == Status.OK


def test_protocol_doc_example():
    """The example frames in docs/PROTOCOL.md section 1."""
    req = encode_request(Cmd.WRITE, 0x17, 0x1234, 2, [0xDDCCBBAA, 0x11223344])
    assert req.hex(" ") == "a5 5a 50 17 34 12 00 00 02 00 aa bb cc dd 44 33 22 11 40 d9"
    assert DeviceModel().feed(req).hex(" ") == "a5 5a d0 17 00 00 00 6c 64"
