# amaranth: UnusedElaboratable=no
"""Tests of the simulated board (``sim/board.py``, ``sim/board_main.cpp``).

The board under test is :class:`sim.board.LinkRamTop` (``LinkEngine`` on a
``BusRAM``): the same rx/tx/busy contract as the SoC, small enough to build in
about 10 s (once; later runs re-use ``sim_build/board/link_ram_test/``). The
host side is the real client, ``host.protocol.Link`` over
``host.transport.SocketTransport``.

* ``test_ping`` — PING answers with the top's parameters;
* ``test_write_read_4096`` — 4096 random words written and read back, every word compared;
* ``test_resync_after_garbage`` — random junk and a truncated frame written raw
  to the socket, then normal requests still work;
* ``test_second_connection_sees_data`` — the device state outlives a connection;
* ``test_speed`` — cycles/s of the raw model and while serving a round trip (printed);
* ``test_bad_top`` / ``test_build_failure`` — one-line ``BoardError``;
* ``test_board_does_not_outlive_parent`` — stdin EOF and the idle timeout stop the process.

``SHIFTFPGA_SEED=<n>`` reproduces the random data (printed on every run).
"""

import random
import socket
import subprocess
import time

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from host.protocol import Link
from host.transport import SocketTransport
from sim.board import BoardError, LinkRamTop, SimulatedBoard, build_board
from sim.harness import seed_from_env

pytestmark = pytest.mark.sim

MEM_DEPTH = 8192
IDENT = 0x5B0A_7E57
NAME = "link_ram_test"


def _top():
    return LinkRamTop(mem_depth=MEM_DEPTH, max_words=256, timeout_cycles=100_000, ident=IDENT)


@pytest.fixture(scope="module")
def rng():
    seed = seed_from_env()
    print(f"[board] seed={seed} (reproduce with SHIFTFPGA_SEED={seed})")
    return random.Random(seed)


@pytest.fixture(scope="module")
def board():
    with SimulatedBoard(_top(), name=NAME, progress=print) as b:
        yield b


def _link(board, **kw):
    return Link(SocketTransport("127.0.0.1", board.port), **kw)


def test_ping(board):
    assert board.address == f"tcp://127.0.0.1:{board.port}"
    with _link(board) as link:
        info = link.ping()
    assert (info.version, info.max_words, info.ident) == (1, 256, IDENT)
    board.check()


def test_write_read_4096(board, rng, capsys):
    words = [rng.getrandbits(32) for _ in range(4096)]
    with _link(board) as link:
        link.ping()
        t0 = time.perf_counter()
        link.write(0x100, words)
        t1 = time.perf_counter()
        back = link.read(0x100, len(words))
        t2 = time.perf_counter()
        assert link.stats["retries"] == 0
    bad = [i for i, (a, b) in enumerate(zip(words, back)) if a != b]
    assert len(back) == len(words) and not bad, f"{len(bad)} words differ, first at word {bad[:1]}"
    with capsys.disabled():
        print(f"\n[board] 4096-word round trip: write {t1 - t0:.3f} s, read {t2 - t1:.3f} s "
              f"({2 * 4 * 4096 / (t2 - t0) / 1e6:.2f} MB/s of payload)")


def test_resync_after_garbage(board, rng):
    words = [rng.getrandbits(32) for _ in range(300)]
    with _link(board, timeout=0.25) as link:
        link.write(0x1000, words)
        before = link.status()
        # Raw junk on the same connection, then a frame header that promises a long
        # payload and never delivers: the engine must drop it on its inter-byte timeout.
        # (The pauses let a frame opened by chance inside the junk time out first, so
        # that the dangling header surely starts a frame of its own.)
        raw = link.transport     # the same connection (the board serves one client at a time)
        raw.write(bytes(rng.getrandbits(8) for _ in range(5000)))
        time.sleep(0.2)
        raw.write(bytes([0xA5, 0x5A, 0x50, 0x33, 0, 0, 0, 0, 0xFF, 0x00]) + bytes(range(40)))
        time.sleep(0.2)
        link.transport.reset_input()     # drop NAKs that the junk may have provoked
        assert link.read(0x1000, len(words)) == words
        after = link.status()
        assert link.ping().ident == IDENT
    assert after.truncated > before.truncated          # the dangling frame was abandoned
    board.check()


def test_second_connection_sees_data(board, rng):
    words = [rng.getrandbits(32) for _ in range(1000)]
    with _link(board) as link:
        link.write(0x1800, words)
    # Also a connection that vanishes in the middle of a frame.
    with socket.create_connection(("127.0.0.1", board.port)) as s:
        s.sendall(bytes([0xA5, 0x5A, 0x50, 0x01, 0, 0x18, 0, 0, 0x10, 0]) + b"\x00" * 20)
    with _link(board) as link:
        assert link.read(0x1800, len(words)) == words
    board.check()


def test_speed(board, capsys):
    # Raw model speed: clock flat out with idle inputs.
    out = subprocess.run([str(board.binary), "--bench", "3000000"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bench_rate = float(out.stderr.split("cycles/s")[0].split(",")[-1])
    # Speed while serving the host: a private board (same build), 16 x 256-word writes + reads.
    words = list(range(4096))
    with SimulatedBoard(_top(), name=NAME, progress=None) as b:
        with _link(b) as link:
            t0 = time.perf_counter()
            link.write(0, words)
            assert link.read(0, len(words)) == words
            dt = time.perf_counter() - t0
    stats = b.stats
    assert stats is not None and stats["connections"] == 1 and stats["cycles"] > 0
    with capsys.disabled():
        print(f"\n[board] model alone: {bench_rate / 1e6:.1f} M cycles/s; serving a 4096-word write+read: "
              f"{stats['cycles']} cycles in {stats['clock_s']:.3f} s of clocking "
              f"({stats['rate'] / 1e6:.1f} M cycles/s), {dt:.3f} s wall")
    assert bench_rate > 1e5


class _BadTop(wiring.Component):
    """A top that breaks the contract (never elaborated)."""

    def __init__(self, members):
        super().__init__(members)

    def elaborate(self, platform):
        return Module()


def test_bad_top():
    byte_streams = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
    no_busy = _BadTop(byte_streams)
    uart_pins = _BadTop({"rx": In(1), "tx": Out(1), "busy": Out(1)})     # HostLink-like: UART pins
    not_ready = _BadTop({**byte_streams, "tx": Out(stream.Signature(8, always_ready=True)), "busy": Out(1)})
    for top in (no_busy, uart_pins, not_ready, 42):
        with pytest.raises(BoardError) as info:
            build_board(top, name="bad_top")
        msg = str(info.value)
        assert "\n" not in msg and "simulated board" in msg
    with pytest.raises(BoardError, match="no member 'busy'"):
        build_board(no_busy, name="bad_top")


def test_build_failure():
    with pytest.raises(BoardError) as info:
        build_board(_top(), name="link_ram_broken", verilator_args=["--no-such-verilator-option"])
    msg = str(info.value)
    assert "\n" not in msg and "build.log" in msg and "failed" in msg


def test_board_does_not_outlive_parent(board):
    # Its stdin (a pipe from the parent) reaches end of file: the board exits.
    p = subprocess.Popen([str(board.binary), "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("LISTENING ")
        p.stdin.close()
        assert p.wait(timeout=5) == 0
        assert "stdin closed" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # No client for --idle-exit seconds: the board exits.
    t0 = time.monotonic()
    out = subprocess.run([str(board.binary), "--idle-exit", "0.3"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "no client" in out.stderr and time.monotonic() - t0 < 5


def test_serial_device_through_a_pty(board, rng):
    """The same board as a serial device (``sim.pty_relay``), opened by pyserial like a real board."""
    from host.transport import SerialTransport
    from sim.pty_relay import PtyRelay

    words = [rng.getrandbits(32) for _ in range(1000)]
    with PtyRelay("127.0.0.1", board.port) as relay:
        with Link(SerialTransport(relay.path), timeout=2.0) as link:
            assert link.ping().ident == IDENT
            link.write(0x200, words)
            assert link.read(0x200, len(words)) == words
