"""Host side of the shiftfpga link protocol (see ``docs/PROTOCOL.md``).

The board exposes a 32-bit word-addressed memory bus behind a UART. The host
sends *request* frames and the board answers every one with a *reply* frame::

    request  A5 5A | CMD SEQ ADDR[4] COUNT[2] | PAYLOAD[COUNT*4 if CMD & 0x40] | CRC[2]
    reply    A5 5A | CMD|0x80 SEQ LEN[2]      | PAYLOAD[LEN*4] | STATUS         | CRC[2]

Multi-byte fields are little-endian except the CRC, which is CRC-16/CCITT-FALSE
(poly 0x1021, init 0xFFFF, no reflection, no final xor) over everything between
the sync bytes and the CRC, sent high byte first, so that the CRC over a whole
frame after the sync bytes is zero.

This module holds the pure encoding (:func:`crc16`, :func:`encode_request`,
:func:`decode_reply`, ...), :class:`Link` (the blocking, retrying client used
by the tools) and :class:`DeviceModel`, a byte-exact Python model of the
gateware's ``hw.link.LinkEngine`` for tests and for running host code without a
board.
"""

from __future__ import annotations

import enum
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "SYNC", "VERSION", "MAGIC", "MAX_WORDS", "Cmd", "Status", "LinkError",
    "crc16", "encode_request", "decode_request", "encode_reply", "decode_reply",
    "Reply", "Request", "DeviceInfo", "LinkCounters", "Link", "DeviceModel",
]

log = logging.getLogger(__name__)

#: The two bytes that open every frame, in both directions.
SYNC = b"\xA5\x5A"
#: Protocol version (low 16 bits of the PING identification word).
VERSION = 1
#: ``"SF"``, the high 16 bits of the PING identification word.
MAGIC = 0x5346
#: Default largest word count of one READ/WRITE (the gateware's ``max_words``).
MAX_WORDS = 256

#: Request header after the sync bytes: cmd, seq, addr, count.
_REQ_HEADER = struct.Struct("<BBIH")
#: Reply header after the sync bytes: cmd, seq, len.
_REP_HEADER = struct.Struct("<BBH")

#: Bit of a command byte: COUNT payload words follow the header.
CMD_HAS_PAYLOAD = 0x40
#: Bit of a command byte: the frame is a reply.
CMD_REPLY = 0x80


class Cmd(enum.IntEnum):
    """Request commands (bit 7 is set in the reply's echo)."""

    PING = 0x01          #: reply: [MAGIC << 16 | VERSION, max_words, ident]
    STATUS = 0x02        #: reply: 3 words of 16-bit link counters (:class:`LinkCounters`)
    READ = 0x10          #: reply: COUNT words from ADDR, ADDR+1, ...
    READ_FIXED = 0x11    #: reply: COUNT words, all read from ADDR (a FIFO port)
    WRITE = 0x50         #: payload: COUNT words to ADDR, ADDR+1, ...
    WRITE_FIXED = 0x51   #: payload: COUNT words, all written to ADDR (a FIFO port)


class Status(enum.IntEnum):
    """Reply status byte (0 = ACK, anything else = NAK with that error code)."""

    OK = 0x00
    BAD_CRC = 0x01       #: request CRC mismatch; nothing executed (retry)
    BAD_LENGTH = 0x02    #: COUNT is 0 or above max_words for READ/WRITE; nothing executed
    UNKNOWN_CMD = 0x03   #: CRC fine but the command is not known; nothing executed
    BUS_TIMEOUT = 0x04   #: a bus target did not answer within the bus timeout


#: Statuses worth a retry (transient line errors); the others would only repeat.
_RETRYABLE = {Status.BAD_CRC}


class LinkError(Exception):
    """The one exception of the host link: a one-line message says what failed."""


# --------------------------------------------------------------------------- CRC

def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc16_table()


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, MSB first, no final xor).

    ``crc16(b"123456789") == 0x29B1``. Pass a previous result as ``crc`` to continue.
    """
    for b in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ b]
    return crc


# ------------------------------------------------------------------ frames

@dataclass(frozen=True)
class Request:
    """A decoded request frame."""

    cmd: int
    seq: int
    addr: int
    count: int
    payload: tuple[int, ...]
    crc: int


@dataclass(frozen=True)
class Reply:
    """A decoded reply frame (``cmd`` without the reply bit)."""

    cmd: int
    seq: int
    words: tuple[int, ...]
    status: int


def _check_u32(words: Iterable[int]) -> list[int]:
    out = []
    for i, w in enumerate(words):
        w = int(w)
        if not 0 <= w <= 0xFFFF_FFFF:
            raise ValueError(f"word {i} = {w} does not fit in 32 unsigned bits")
        out.append(w)
    return out


def encode_request(cmd: int, seq: int, addr: int = 0, count: int = 0, payload: Sequence[int] = ()) -> bytes:
    """Encode a request frame (sync bytes and CRC included).

    ``payload`` must hold exactly ``count`` words when ``cmd`` has bit 6 set, and
    must be empty otherwise.

    Raises
    ------
    ValueError
        If a field is out of range or the payload does not match the command.
    """
    if not 0 <= cmd <= 0x7F:
        raise ValueError(f"command must be 0..0x7F, not {cmd:#x}")
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"sequence number must be 0..255, not {seq}")
    if not 0 <= addr <= 0xFFFF_FFFF:
        raise ValueError(f"address must be a 32-bit word address, not {addr:#x}")
    if not 0 <= count <= 0xFFFF:
        raise ValueError(f"count must be 0..65535, not {count}")
    words = _check_u32(payload)
    if cmd & CMD_HAS_PAYLOAD:
        if len(words) != count:
            raise ValueError(f"command {cmd:#04x} needs {count} payload words, got {len(words)}")
    elif words:
        raise ValueError(f"command {cmd:#04x} carries no payload, got {len(words)} words")
    body = _REQ_HEADER.pack(cmd, seq, addr, count) + struct.pack(f"<{len(words)}I", *words)
    return SYNC + body + crc16(body).to_bytes(2, "big")


def decode_request(frame: bytes) -> Request:
    """Decode a complete request frame (as :func:`encode_request` makes it).

    Raises
    ------
    ValueError
        If the frame is malformed or its CRC is wrong.
    """
    if len(frame) < 2 + _REQ_HEADER.size + 2 or frame[:2] != SYNC:
        raise ValueError("not a request frame (too short or no sync bytes)")
    cmd, seq, addr, count = _REQ_HEADER.unpack_from(frame, 2)
    n = count if cmd & CMD_HAS_PAYLOAD else 0
    if len(frame) != 2 + _REQ_HEADER.size + 4 * n + 2:
        raise ValueError(f"request frame length {len(frame)} does not match count {count}")
    if crc16(frame[2:]) != 0:
        raise ValueError("request CRC mismatch")
    payload = struct.unpack_from(f"<{n}I", frame, 2 + _REQ_HEADER.size)
    return Request(cmd, seq, addr, count, payload, int.from_bytes(frame[-2:], "big"))


def encode_reply(cmd: int, seq: int, words: Sequence[int] = (), status: int = Status.OK) -> bytes:
    """Encode a reply frame to request command ``cmd`` (the reply bit is added here)."""
    words = _check_u32(words)
    body = _REP_HEADER.pack((cmd | CMD_REPLY) & 0xFF, seq, len(words))
    body += struct.pack(f"<{len(words)}I", *words) + bytes([status])
    return SYNC + body + crc16(body).to_bytes(2, "big")


def decode_reply(frame: bytes) -> Reply:
    """Decode a complete reply frame.

    Raises
    ------
    ValueError
        If the frame is malformed or its CRC is wrong.
    """
    if len(frame) < 2 + _REP_HEADER.size + 3 or frame[:2] != SYNC:
        raise ValueError("not a reply frame (too short or no sync bytes)")
    cmd, seq, n = _REP_HEADER.unpack_from(frame, 2)
    if not cmd & CMD_REPLY:
        raise ValueError(f"command byte {cmd:#04x} of a reply lacks the reply bit")
    if len(frame) != 2 + _REP_HEADER.size + 4 * n + 3:
        raise ValueError(f"reply frame length {len(frame)} does not match LEN {n}")
    if crc16(frame[2:]) != 0:
        raise ValueError("reply CRC mismatch")
    words = struct.unpack_from(f"<{n}I", frame, 2 + _REP_HEADER.size)
    return Reply(cmd & 0x7F, seq, words, frame[-3])


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"error {code:#04x}"


# ------------------------------------------------------------------ the client

@dataclass(frozen=True)
class DeviceInfo:
    """What PING returns."""

    version: int
    max_words: int
    ident: int


@dataclass(frozen=True)
class LinkCounters:
    """The board's link counters (16 bits each, wrapping), as STATUS returns them."""

    frames_ok: int       #: requests with a good CRC
    bad_crc: int         #: requests with a bad CRC
    rx_errors: int       #: UART framing errors and overruns
    truncated: int       #: frames abandoned on the inter-byte timeout
    dup_writes: int      #: retried WRITEs acknowledged without executing them again
    bus_timeouts: int    #: bus accesses abandoned on the bus timeout

    @classmethod
    def from_words(cls, words: Sequence[int]) -> "LinkCounters":
        w = list(words) + [0] * 3
        return cls(w[0] & 0xFFFF, w[0] >> 16, w[1] & 0xFFFF, w[1] >> 16, w[2] & 0xFFFF, w[2] >> 16)


class _Retry(Exception):
    """A failed attempt that deserves another one (timeout, bad or short reply)."""


class Link:
    """Blocking client for the board's memory bus, with timeouts and retries.

    Parameters
    ----------
    transport
        Anything with ``write(data: bytes)``, ``read(n, timeout) -> bytes`` (up to
        ``n`` bytes, ``b""`` on timeout), ``reset_input()`` and ``byte_time``
        (seconds per byte on the wire, 0 when unknown); see ``host.transport``.
    timeout : float
        Seconds to wait for a reply on top of the time its bytes take on the wire.
        Keep it above the board's inter-byte timeout (10 ms by default) so a retry
        always finds the board hunting for a new frame.
    retries : int
        How many times a request is sent again after a timeout, a broken reply or
        a BAD_CRC NAK before :class:`LinkError` is raised.
    max_words : int, optional
        Words per frame; by default the board's own limit, learned by PING.

    Every operation raises :class:`LinkError` (one line: what, where, why) and
    never waits longer than ``(retries + 1) * (timeout + wire time)``.
    The first request of a :class:`Link` is always a PING: it learns the board's
    limits and clears the board's duplicate-WRITE memory, so that a new session
    can never be mistaken for a retry of the previous one.
    """

    def __init__(self, transport, *, timeout: float = 0.25, retries: int = 3, max_words: int | None = None,
                 seed: int | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries!r}")
        if max_words is not None and not 1 <= max_words <= 0xFFFF:
            raise ValueError(f"max_words must be 1..65535, not {max_words!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._max_words = max_words
        self._seq = random.Random(seed).randrange(256)
        self._info: DeviceInfo | None = None
        self.stats = {"requests": 0, "retries": 0}

    # -- public API

    def ping(self) -> DeviceInfo:
        """Identify the board; returns its protocol version, word limit and ident word."""
        words = self._transact(Cmd.PING, 0, 0, (), 3, "PING")
        if words[0] >> 16 != MAGIC:
            raise LinkError(f"PING: the device is not a shiftfpga link (id word {words[0]:#010x})")
        self._info = DeviceInfo(words[0] & 0xFFFF, words[1] & 0xFFFF, words[2])
        if self._info.version != VERSION:
            raise LinkError(f"PING: device speaks protocol version {self._info.version}, host {VERSION}")
        if self._info.max_words == 0:
            raise LinkError("PING: device reports max_words = 0")
        return self._info

    def status(self) -> LinkCounters:
        """The board's link error counters."""
        self._ensure_open()
        return LinkCounters.from_words(self._transact(Cmd.STATUS, 0, 0, (), 3, "STATUS"))

    def write(self, addr: int, words: Iterable[int], *, increment: bool = True, progress: bool = False) -> None:
        """Write 32-bit ``words`` starting at word address ``addr``.

        Large writes are split into frames of ``max_words``. With ``increment=False``
        every word goes to ``addr`` (a FIFO port). ``progress`` shows a tqdm bar.
        """
        data = _check_u32(words)
        self._check_range(addr, len(data), increment)
        cmd = Cmd.WRITE if increment else Cmd.WRITE_FIXED
        with self._progress(progress, 4 * len(data), f"write @{addr:#x}") as bar:
            for off in range(0, len(data), self._chunk()):
                chunk = data[off:off + self._chunk()]
                a = addr + off if increment else addr
                self._transact(cmd, a, len(chunk), chunk, 0, f"WRITE @{a:#010x} ({len(chunk)} words)")
                bar.update(4 * len(chunk))

    def read(self, addr: int, n: int, *, increment: bool = True, progress: bool = False) -> list[int]:
        """Read ``n`` 32-bit words starting at word address ``addr``."""
        if n < 0:
            raise ValueError(f"word count must be >= 0, not {n}")
        self._check_range(addr, n, increment)
        cmd = Cmd.READ if increment else Cmd.READ_FIXED
        out: list[int] = []
        with self._progress(progress, 4 * n, f"read @{addr:#x}") as bar:
            for off in range(0, n, self._chunk()):
                k = min(self._chunk(), n - off)
                a = addr + off if increment else addr
                out += self._transact(cmd, a, k, (), k, f"READ @{a:#010x} ({k} words)")
                bar.update(4 * k)
        return out

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def info(self) -> DeviceInfo:
        """The board's PING answer (pings it on first use)."""
        self._ensure_open()
        return self._info

    # -- internals

    def _ensure_open(self) -> None:
        if self._info is None:
            self.ping()

    def _chunk(self) -> int:
        self._ensure_open()
        return self._max_words or self._info.max_words

    @staticmethod
    def _check_range(addr: int, n: int, increment: bool) -> None:
        if not 0 <= addr <= 0xFFFF_FFFF:
            raise ValueError(f"address must be a 32-bit word address, not {addr:#x}")
        if increment and addr + n > 1 << 32:
            raise ValueError(f"{n} words from {addr:#x} run past the end of the 32-bit address space")

    @staticmethod
    def _progress(enabled: bool, total: int, desc: str):
        if enabled:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)
        return _NoBar()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _transact(self, cmd: int, addr: int, count: int, payload: Sequence[int], expect: int, what: str) -> list[int]:
        seq = self._next_seq()
        frame = encode_request(cmd, seq, addr, count, payload)
        byte_time = float(getattr(self.transport, "byte_time", 0.0) or 0.0)
        wait = self.timeout + (len(frame) + 9 + 4 * expect) * byte_time
        self.stats["requests"] += 1
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                log.info("%s: retry %d after %s", what, attempt, last)
            self.transport.reset_input()
            self.transport.write(frame)
            try:
                reply = self._receive(cmd, seq, time.monotonic() + wait)
            except _Retry as exc:
                last = str(exc)
                continue
            if reply.status == Status.OK:
                if len(reply.words) != expect:
                    last = f"reply carries {len(reply.words)} words instead of {expect}"
                    continue
                return list(reply.words)
            if reply.status in _RETRYABLE:
                last = f"device NAK {_status_name(reply.status)}"
                continue
            raise LinkError(f"{what}: device NAK {_status_name(reply.status)}")
        raise LinkError(f"{what}: no valid reply after {self.retries + 1} attempts (last: {last})")

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            chunk = self.transport.read(n - len(buf), left)
            if not chunk:
                break
            buf += chunk
        if len(buf) < n:
            raise _Retry(f"timeout after {self.timeout:g} s" if not buf else f"reply truncated ({len(buf)} of {n} bytes)")
        return bytes(buf)

    def _receive(self, cmd: int, seq: int, deadline: float) -> Reply:
        """The reply to (cmd, seq); skips garbage and stale replies until ``deadline``."""
        while True:
            # Hunt for A5 5A.
            prev = -1
            while True:
                b = self._read_exact(1, deadline)[0]
                if prev == SYNC[0] and b == SYNC[1]:
                    break
                prev = b
            head = self._read_exact(_REP_HEADER.size, deadline)
            rcmd, rseq, n = _REP_HEADER.unpack(head)
            if not rcmd & CMD_REPLY or n > max(self._max_words or 0, self._info.max_words if self._info else 0xFFFF, 3):
                continue  # not a plausible reply header: sync bytes inside noise, hunt on
            rest = self._read_exact(4 * n + 3, deadline)
            if crc16(head + rest) != 0:
                raise _Retry("reply CRC mismatch")
            if rcmd != (cmd | CMD_REPLY) or rseq != seq:
                log.debug("skipping stale reply cmd=%#04x seq=%d (want %#04x/%d)", rcmd, rseq, cmd | CMD_REPLY, seq)
                continue
            return decode_reply(SYNC + head + rest)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


# ------------------------------------------------------------------ device model

class DeviceModel:
    """Byte-exact Python model of the board side (``hw.link.LinkEngine``).

    Feed it the bytes the board receives; it returns the bytes the board sends.
    The memory is a sparse dict of word address -> 32-bit word (0 when unset).

    Parameters
    ----------
    max_words : int
        Largest READ/WRITE word count (the gateware's ``max_words``).
    ident : int
        The third PING word.
    read_hook, write_hook : callable, optional
        ``read_hook(addr) -> int | None`` and ``write_hook(addr, word) -> bool``
        replace the memory; ``None`` / ``False`` model a bus timeout.
    """

    def __init__(self, *, max_words: int = MAX_WORDS, ident: int = 0,
                 read_hook: Callable[[int], int | None] | None = None,
                 write_hook: Callable[[int, int], bool] | None = None):
        self.max_words = max_words
        self.ident = ident
        self.mem: dict[int, int] = {}
        self.read_hook = read_hook
        self.write_hook = write_hook
        self.counters = dict(frames_ok=0, bad_crc=0, rx_errors=0, truncated=0, dup_writes=0, bus_timeouts=0)
        self.executed: list[Request] = []  # every request that touched the bus or answered, in order
        self._dup: tuple[int, int] | None = None
        self._buf = bytearray()
        self._hunting = True

    # -- line events

    def feed(self, data: bytes) -> bytes:
        """Process received bytes; returns the reply bytes (possibly several replies)."""
        out = bytearray()
        for b in data:
            if self._hunting:
                # Hunt: keep only a trailing A5 (or a complete A5 5A).
                if self._buf[-1:] == SYNC[:1] and b == SYNC[1]:
                    self._buf = bytearray(SYNC)
                    self._hunting = False
                else:
                    self._buf = bytearray([b]) if b == SYNC[0] else bytearray()
                continue
            self._buf.append(b)
            need = self._frame_length()
            if need is not None and len(self._buf) == need:
                out += self._execute(bytes(self._buf))
                self._buf = bytearray()
                self._hunting = True
        return bytes(out)

    def line_idle(self) -> None:
        """The inter-byte timeout expired: drop a partial frame and hunt again."""
        if not self._hunting:
            self.counters["truncated"] += 1
        self._buf = bytearray()
        self._hunting = True

    def line_error(self) -> None:
        """A UART framing error: drop a partial frame and hunt again."""
        self.counters["rx_errors"] += 1
        self._buf = bytearray()
        self._hunting = True

    # -- internals

    def _frame_length(self) -> int | None:
        if len(self._buf) < 2 + _REQ_HEADER.size:
            return None
        cmd, _, _, count = _REQ_HEADER.unpack_from(self._buf, 2)
        return 2 + _REQ_HEADER.size + (4 * count if cmd & CMD_HAS_PAYLOAD else 0) + 2

    def _bump(self, name: str) -> None:
        self.counters[name] = (self.counters[name] + 1) & 0xFFFF

    def _execute(self, frame: bytes) -> bytes:
        cmd, seq, addr, count = _REQ_HEADER.unpack_from(frame, 2)
        if crc16(frame[2:]) != 0:
            self._bump("bad_crc")
            return encode_reply(cmd & 0x7F, seq, (), Status.BAD_CRC)
        self._bump("frames_ok")
        crc = int.from_bytes(frame[-2:], "big")
        is_write = cmd in (Cmd.WRITE, Cmd.WRITE_FIXED)
        if is_write and self._dup == (seq, crc):
            self._bump("dup_writes")
            return encode_reply(cmd, seq, (), Status.OK)
        self._dup = None
        step = 0 if cmd & 1 else 1
        if cmd == Cmd.PING:
            return encode_reply(cmd, seq, [(MAGIC << 16) | VERSION, self.max_words, self.ident])
        if cmd == Cmd.STATUS:
            c = self.counters
            return encode_reply(cmd, seq, [c["frames_ok"] | c["bad_crc"] << 16, c["rx_errors"] | c["truncated"] << 16,
                                           c["dup_writes"] | c["bus_timeouts"] << 16])
        if cmd not in (Cmd.READ, Cmd.READ_FIXED, Cmd.WRITE, Cmd.WRITE_FIXED):
            return encode_reply(cmd & 0x7F, seq, (), Status.UNKNOWN_CMD)
        if not 1 <= count <= self.max_words:
            return encode_reply(cmd, seq, (), Status.BAD_LENGTH)
        req = decode_request(frame)
        self.executed.append(req)
        if is_write:
            for i, w in enumerate(req.payload):
                a = (addr + i * step) & 0xFFFF_FFFF
                if self.write_hook is not None:
                    if not self.write_hook(a, w):
                        self._bump("bus_timeouts")
                        return encode_reply(cmd, seq, (), Status.BUS_TIMEOUT)
                else:
                    self.mem[a] = w
            self._dup = (seq, crc)
            return encode_reply(cmd, seq, (), Status.OK)
        words, status = [], Status.OK
        for i in range(count):
            a = (addr + i * step) & 0xFFFF_FFFF
            if status != Status.OK:
                words.append(0)
                continue
            w = self.read_hook(a) if self.read_hook is not None else self.mem.get(a, 0)
            if w is None:
                self._bump("bus_timeouts")
                status, w = Status.BUS_TIMEOUT, 0
            words.append(w)
        return encode_reply(cmd, seq, words, status)
