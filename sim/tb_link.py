"""cocotb testbench of the host link: UART pins -> ``hw.link.HostLink`` -> ``BusRAM``.

Driven by ``sim/test_link.py``. The toplevel has the ports ``rx`` (UART into the
board), ``tx`` (UART out of it), ``stall_rand`` (random bus wait states) and
``hang`` (the bus never answers). The testbench is the host: it drives real 8N1
bit timing on ``rx`` (any bit period, independent of the board's clock, so a
3 Mbaud host can talk to a board whose divisor gives 2.94 Mbaud), samples ``tx``
in the middle of each bit, and checks every reply byte for byte against
``host.protocol``'s encoder and a Python mirror of the RAM.

Configuration comes as JSON in ``TB_LINK``: ``clk_ns``, ``bit_ns`` (host bit
period), ``max_words``, ``mem_depth``, ``timeout_cycles``, ``bus_timeout``,
``ident``, ``mode`` (``"full"`` runs every test, ``"baud"`` only the short
exact-3-Mbaud check).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.triggers import FallingEdge, Timer
from cocotb.utils import get_sim_time

from host.protocol import (
    MAGIC, SYNC, VERSION, Cmd, LinkCounters, Reply, Status, decode_reply, encode_request,
)
from sim.stream import reset, start_clock

CFG = json.loads(os.environ.get("TB_LINK", "{}"))
SEED = int(os.environ.get("SHIFTFPGA_SEED", "1"))
MODE = CFG.get("mode", "full")


def _rng(salt: str) -> random.Random:
    return random.Random(f"{SEED}:{salt}")


class Host:
    """The host end of the wire: a bit-timed UART and frame helpers."""

    def __init__(self, dut):
        self.dut = dut
        self.bit_ps = CFG["bit_ns"] * 1000.0
        self.clk_ns = CFG["clk_ns"]
        self.rx_bytes = bytearray()      # bytes the board sent, not yet consumed
        self.framing_errors = 0          # stop bits of the board's bytes seen low
        self.seq = _rng("seq").randrange(256)
        dut.rx.value = 1
        dut.stall_rand.value = 0
        dut.hang.value = 0

    async def start(self):
        start_clock(self.dut.clk, self.clk_ns)
        await reset(self.dut.clk, self.dut.rst, 4)
        cocotb.start_soon(self._monitor())
        await self.idle_bits(20)

    # -- bit level

    async def _wait_until(self, t_ps: float) -> None:
        now = get_sim_time("ps")
        if round(t_ps) > now:
            await Timer(round(t_ps) - now, "ps")

    async def idle_bits(self, n: float) -> None:
        self.dut.rx.value = 1
        await self._wait_until(get_sim_time("ps") + n * self.bit_ps)

    async def send(self, data: bytes, *, gaps: list[int] | None = None, bad_stop: set[int] = frozenset()) -> None:
        """Send bytes with exact host bit timing; ``gaps[i]`` idle bit-times after byte i;
        a byte whose index is in ``bad_stop`` gets a low stop bit (framing error)."""
        t = float(get_sim_time("ps"))
        for i, byte in enumerate(data):
            bits = [0] + [(byte >> k) & 1 for k in range(8)] + [0 if i in bad_stop else 1]
            for bit in bits:
                self.dut.rx.value = bit
                t += self.bit_ps
                await self._wait_until(t)
            if i in bad_stop:
                self.dut.rx.value = 1
                t += self.bit_ps
                await self._wait_until(t)
            if gaps and gaps[i]:
                self.dut.rx.value = 1
                t += gaps[i] * self.bit_ps
                await self._wait_until(t)
        self.dut.rx.value = 1

    async def _monitor(self) -> None:
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            t0 = get_sim_time("ps")
            await self._wait_until(t0 + 0.5 * self.bit_ps)
            if int(tx.value) != 0:
                continue  # glitch
            byte = 0
            for k in range(8):
                await self._wait_until(t0 + (1.5 + k) * self.bit_ps)
                byte |= int(tx.value) << k
            await self._wait_until(t0 + 9.5 * self.bit_ps)
            if int(tx.value) != 1:
                self.framing_errors += 1
            self.rx_bytes.append(byte)

    # -- frame level

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def byte_ns(self) -> float:
        return self.bit_ps * 10 / 1000.0

    async def _take(self, n: int, deadline_ps: float) -> bytes | None:
        while len(self.rx_bytes) < n:
            if get_sim_time("ps") >= deadline_ps:
                return None
            await Timer(round(self.bit_ps * 10), "ps")
        out = bytes(self.rx_bytes[:n])
        del self.rx_bytes[:n]
        return out

    async def reply(self, *, timeout_bytes: int = 400) -> Reply | None:
        """The next reply frame (``None`` if none starts within ``timeout_bytes`` byte-times).
        Asserts that no garbage precedes it and that its CRC is right."""
        deadline = get_sim_time("ps") + timeout_bytes * 10 * self.bit_ps
        head = await self._take(6, deadline)
        if head is None:
            assert not self.rx_bytes, f"incomplete reply from the board: {bytes(self.rx_bytes).hex()}"
            return None
        assert head[:2] == SYNC, f"reply does not start with A5 5A: {head.hex()}"
        n = int.from_bytes(head[4:6], "little")
        rest = await self._take(4 * n + 3, deadline + (4 * n + 3) * 10 * self.bit_ps)
        assert rest is not None, f"reply truncated after header {head.hex()}"
        assert self.framing_errors == 0, "the board sent a byte with a low stop bit"
        return decode_reply(head + rest)  # raises on a CRC error

    async def request(self, cmd, addr=0, count=0, payload=(), *, seq=None, gaps=None, expect=Status.OK,
                      timeout_bytes=None) -> Reply:
        """Send one request and check the reply's command, sequence number and status."""
        seq = self.next_seq() if seq is None else seq
        frame = encode_request(cmd, seq, addr, count, list(payload))
        await self.send(frame, gaps=gaps)
        rep = await self.reply(timeout_bytes=timeout_bytes or 200 + 5 * count)
        assert rep is not None, f"no reply to {_name(Cmd, cmd)} seq {seq}"
        assert (rep.cmd, rep.seq) == (cmd, seq), f"reply to {rep.cmd:#x}/{rep.seq}, sent {cmd:#x}/{seq}"
        assert rep.status == expect, (
            f"{_name(Cmd, cmd)}: status {_name(Status, rep.status)}, expected {_name(Status, expect)}")
        return rep

    async def write(self, addr, words, **kw):
        cmd = Cmd.WRITE if kw.pop("increment", True) else Cmd.WRITE_FIXED
        return await self.request(cmd, addr, len(words), words, **kw)

    async def read(self, addr, n, **kw) -> list[int]:
        cmd = Cmd.READ if kw.pop("increment", True) else Cmd.READ_FIXED
        rep = await self.request(cmd, addr, n, **kw)
        if rep.status == Status.OK:
            assert len(rep.words) == n, f"READ of {n} words returned {len(rep.words)}"
        return list(rep.words)

    async def counters(self) -> LinkCounters:
        return LinkCounters.from_words((await self.request(Cmd.STATUS)).words)

    async def expect_silence(self, byte_times: int) -> None:
        await self.idle_bits(10 * byte_times)
        assert not self.rx_bytes, f"unexpected bytes from the board: {bytes(self.rx_bytes).hex()}"

    async def pause(self) -> None:
        """Stay quiet for twice the board's inter-byte timeout."""
        await Timer(round(2 * CFG["timeout_cycles"] * self.clk_ns * 1000), "ps")


def _name(enum_cls, value) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return f"{value:#04x}"


def _mirror_check(got, want, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{what}: word {i}: expected {w:#010x}, got {g:#010x}"
    assert len(got) == len(want), f"{what}: {len(got)} words, expected {len(want)}"


def _random_gaps(rng, n, max_bits):
    """Idle gaps between request bytes, well below the inter-byte timeout."""
    return [rng.choice((0, 0, 0, rng.randint(1, max_bits))) for _ in range(n)]


def _gap_limit_bits() -> int:
    bits_per_timeout = CFG["timeout_cycles"] * CFG["clk_ns"] / CFG["bit_ns"]
    return max(0, int(bits_per_timeout * 0.5) - 10)


async def _ping(host: Host):
    rep = await host.request(Cmd.PING)
    assert list(rep.words) == [(MAGIC << 16) | VERSION, CFG["max_words"], CFG["ident"]], [hex(w) for w in rep.words]


@cocotb.test()
async def test_ping_status(dut):
    """PING identifies the link; STATUS counters start at zero and count good frames."""
    host = Host(dut)
    await host.start()
    await _ping(host)
    c = await host.counters()
    assert c == LinkCounters(2, 0, 0, 0, 0, 0), c


@cocotb.test(skip=MODE != "full")
async def test_write_read_random(dut):
    """Random WRITE/READ transfers (1..max_words, incrementing and fixed address), random
    inter-byte gaps and bus wait states; every word read back is compared with a mirror."""
    rng = _rng("rw")
    host = Host(dut)
    await host.start()
    depth, maxw = CFG["mem_depth"], CFG["max_words"]
    mirror = [0] * depth
    gap = _gap_limit_bits()
    for i in range(CFG.get("transfers", 16)):
        dut.stall_rand.value = rng.random() < 0.5
        n = rng.choice([1, maxw, rng.randint(1, maxw)])
        addr = rng.randrange(depth - n + 1)
        words = [rng.choice([0, 0xFFFF_FFFF, 0xA55A_A55A, rng.getrandbits(32)]) for _ in range(n)]
        kind = rng.choice(["inc", "inc", "inc", "fixed"])
        if kind == "inc":
            await host.write(addr, words, gaps=_random_gaps(rng, 12 + 4 * n, gap))
            mirror[addr:addr + n] = words
        else:
            await host.write(addr, words, increment=False)
            mirror[addr] = words[-1]
        m = rng.randint(1, maxw)
        raddr = rng.randrange(depth - m + 1)
        if rng.random() < 0.2:
            got = await host.read(raddr, m, increment=False)
            _mirror_check(got, [mirror[raddr]] * m, f"transfer {i}: READ_FIXED {m} @{raddr:#x}")
        else:
            got = await host.read(raddr, m, gaps=_random_gaps(rng, 12, gap))
            _mirror_check(got, mirror[raddr:raddr + m], f"transfer {i}: READ {m} @{raddr:#x}")
    dut.stall_rand.value = 1
    got = []
    for a in range(0, depth, maxw):
        got += await host.read(a, min(maxw, depth - a))
    _mirror_check(got, mirror, "whole RAM")
    c = await host.counters()
    assert (c.bad_crc, c.rx_errors, c.truncated, c.dup_writes, c.bus_timeouts) == (0, 0, 0, 0, 0), c


@cocotb.test(skip=MODE != "full")
async def test_errors_nak(dut):
    """Bad CRC, bad length and unknown commands are NAKed and execute nothing."""
    rng = _rng("nak")
    host = Host(dut)
    await host.start()
    base = [rng.getrandbits(32) for _ in range(8)]
    await host.write(16, base)
    maxw = CFG["max_words"]
    for trial in range(6):
        # Corrupt one bit of ADDR, the payload or the CRC (not CMD/COUNT, which
        # would change the frame length): NAK BAD_CRC, nothing written.
        seq = host.next_seq()
        frame = bytearray(encode_request(Cmd.WRITE, seq, 16, 8, [rng.getrandbits(32) for _ in range(8)]))
        pos = rng.choice([3, 4, 5, 6, 7, *range(10, len(frame))])  # SEQ, ADDR, payload, CRC
        frame[pos] ^= 1 << rng.randrange(8)
        await host.send(bytes(frame))
        rep = await host.reply()
        assert rep is not None and rep.status == Status.BAD_CRC and rep.cmd == Cmd.WRITE, (trial, pos, rep)
        assert not rep.words
    # A corrupted READ is NAKed without data.
    frame = bytearray(encode_request(Cmd.READ, host.next_seq(), 16, 8))
    frame[-1] ^= 0x80
    await host.send(bytes(frame))
    rep = await host.reply()
    assert rep.status == Status.BAD_CRC and not rep.words, rep
    _mirror_check(await host.read(16, 8), base, "after bad-CRC writes")
    await host.read(0, 0, expect=Status.BAD_LENGTH)
    await host.read(0, maxw + 1, expect=Status.BAD_LENGTH)
    await host.request(Cmd.WRITE, 16, 0, [], expect=Status.BAD_LENGTH)
    # A WRITE longer than the buffer: the whole payload is consumed, then BAD_LENGTH.
    await host.write(16, [0xDEAD_0000 + i for i in range(maxw + 3)], expect=Status.BAD_LENGTH)
    for cmd in (0x00, 0x03, 0x7F, 0x20, 0x41):
        rep = await host.request(cmd, 0, 2, [1, 2] if cmd & 0x40 else [], expect=Status.UNKNOWN_CMD)
        assert not rep.words
    _mirror_check(await host.read(16, 8), base, "after NAKed requests")
    c = await host.counters()
    assert c.bad_crc == 7 and c.truncated == 0 and c.rx_errors == 0, c


@cocotb.test(skip=MODE != "full")
async def test_resync(dut):
    """Garbage, lone sync bytes, truncated frames and bogus headers never lock the
    receiver: after a pause (or at once, for garbage without A5) a good frame works."""
    rng = _rng("resync")
    host = Host(dut)
    await host.start()
    truncated = 0
    for trial in range(8):
        words = [rng.getrandbits(32) for _ in range(rng.randint(1, 6))]
        addr = rng.randrange(CFG["mem_depth"] - 8)
        kind = trial % 4
        if kind == 0:
            # Noise without a sync byte, then a good frame right away.
            junk = bytes(rng.choice([b for b in range(256) if b != 0xA5]) for _ in range(rng.randint(1, 40)))
            await host.send(junk)
        elif kind == 1:
            # A truncated frame, then silence.
            full = encode_request(Cmd.WRITE, host.next_seq(), addr, len(words), words)
            await host.send(full[:rng.randint(3, len(full) - 1)])
            await host.pause()
            truncated += 1
        elif kind == 2:
            # Sync bytes followed by a bogus header announcing a huge payload, then silence.
            await host.send(SYNC + bytes([Cmd.WRITE, 7]) + bytes(4) + b"\xff\xff" + bytes(rng.randint(0, 30)))
            await host.pause()
            truncated += 1
        else:
            # Random garbage including sync pairs, then silence.
            junk = bytearray(rng.getrandbits(8) for _ in range(40))
            junk[rng.randrange(30):][:2] = SYNC
            await host.send(bytes(junk))
            await host.pause()
            # The garbage may happen to form a complete (NAKed) frame: drop any reply.
            host.rx_bytes.clear()
        if kind != 3:
            await host.expect_silence(2)
        await host.write(addr, words)
        _mirror_check(await host.read(addr, len(words)), words, f"trial {trial}")
    c = await host.counters()
    assert c.truncated >= truncated and c.rx_errors == 0, c


@cocotb.test(skip=MODE != "full")
async def test_framing_error(dut):
    """A byte with a low stop bit aborts the frame (counted); the next frame works."""
    rng = _rng("framing")
    host = Host(dut)
    await host.start()
    old = await host.read(40, 2)   # the RAM keeps what earlier tests wrote
    before = await host.counters()
    words = [w ^ 0x1122_3344 for w in old]
    frame = encode_request(Cmd.WRITE, host.next_seq(), 40, 2, words)
    await host.send(frame, bad_stop={rng.randrange(3, len(frame) - 2)})
    await host.expect_silence(30)  # the rest of the frame is hunted through: no reply
    await host.pause()
    assert (await host.read(40, 2)) == old, "a frame with a framing error was executed"
    await host.write(40, words)
    _mirror_check(await host.read(40, 2), words, "after framing error")
    after = await host.counters()
    assert after.rx_errors == before.rx_errors + 1, (before, after)


@cocotb.test(skip=MODE != "full")
async def test_duplicate_write(dut):
    """A retried WRITE (same sequence number and CRC) is ACKed but not executed again;
    a new request in between makes the same frame execute."""
    host = Host(dut)
    await host.start()
    seq = host.next_seq()
    await host.write(50, [1, 2, 3], seq=seq)
    await host.write(50, [1, 2, 3], seq=seq)         # the retry: ACK, no bus traffic
    c = await host.counters()
    assert c.dup_writes == 1, c
    await host.write(50, [1, 2, 3], seq=seq)         # STATUS in between: executes again
    c2 = await host.counters()
    assert c2.dup_writes == 1, c2
    await host.write(50, [4, 5, 6], seq=seq)         # same seq, other data: executes
    assert await host.read(50, 3) == [4, 5, 6]
    # Proof that a retry does not touch the bus: with the target hung it still gets ACK.
    seq = host.next_seq()
    await host.write(60, [7], seq=seq)
    dut.hang.value = 1
    await host.write(60, [7], seq=seq)               # would be BUS_TIMEOUT if executed
    dut.hang.value = 0
    assert (await host.counters()).dup_writes == 2


@cocotb.test(skip=MODE != "full")
async def test_bus_timeout(dut):
    """A target that never answers: READ replies with zeros and BUS_TIMEOUT, WRITE is
    NAKed BUS_TIMEOUT, and the link works again when the target recovers."""
    host = Host(dut)
    await host.start()
    await host.write(8, [0xCAFE_F00D, 0x1234_5678])
    dut.hang.value = 1
    rep = await host.request(Cmd.READ, 8, 2, expect=Status.BUS_TIMEOUT)
    assert list(rep.words) == [0, 0], rep
    await host.write(8, [1, 2], expect=Status.BUS_TIMEOUT)
    dut.hang.value = 0
    assert await host.read(8, 2) == [0xCAFE_F00D, 0x1234_5678]
    c = await host.counters()
    assert c.bus_timeouts == 2, c


@cocotb.test(skip=MODE != "baud")
async def test_3mbaud(dut):
    """Exact 3 Mbaud host timing against a 50 MHz board (divisor 17, -1.96 %):
    write and read back random words with bus wait states."""
    rng = _rng("3m")
    host = Host(dut)
    await host.start()
    await _ping(host)
    dut.stall_rand.value = 1
    for n in (1, CFG["max_words"]):
        words = [rng.getrandbits(32) for _ in range(n)]
        await host.write(3, words)
        _mirror_check(await host.read(3, n), words, f"3 Mbaud {n} words")
