"""Byte transports for :class:`host.protocol.Link`.

A transport moves raw bytes; the protocol above it does framing, CRC, timeouts
and retries. Every transport has the same small interface:

``write(data: bytes) -> None``
    Send all of ``data``.
``read(n: int, timeout: float) -> bytes``
    Wait at most ``timeout`` seconds for at least one byte; return 1..``n`` bytes,
    or ``b""`` when nothing arrived in time. Never blocks longer.
``reset_input() -> None``
    Throw away bytes received but not yet read.
``byte_time``
    Seconds one byte takes on the wire (``10 / baud`` for a UART), 0 when the
    transport has no wire speed; the link adds it to its timeouts.
``close() -> None``

Implementations:

* :class:`SerialTransport` — a real board (``/dev/ttyUSB0``, ``COM3``) or a
  pseudo-terminal of the simulated board (``/dev/pts/N``), through pyserial;
* :class:`SocketTransport` — the simulated board on a TCP port (``127.0.0.1``);
* :class:`InProcessTransport` — a Python callable standing in for the board
  (tests, ``host.protocol.DeviceModel``).

:func:`open_transport` picks one from a string: ``tcp://HOST:PORT`` or a
serial port name / path.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable

from .protocol import LinkError

__all__ = ["TransportError", "SerialTransport", "SocketTransport", "InProcessTransport", "open_transport"]

#: Default baud rate of the board (the FT231X maximum).
DEFAULT_BAUD = 3_000_000


class TransportError(LinkError):
    """A transport could not be opened or failed; the message is one line."""


class SerialTransport:
    """A serial port (USB-UART of a board, or a pty) through pyserial.

    Parameters
    ----------
    port : str
        Device name (``/dev/ttyUSB0``, ``COM3``, ``/dev/pts/7``).
    baudrate : int
        Bit rate; 3 Mbaud for the ULX3S. Ignored by pseudo-terminals.

    Raises
    ------
    TransportError
        If the port does not exist or cannot be opened (one line, with the port name).
    """

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUD):
        import serial

        try:
            self._ser = serial.Serial(port, baudrate=baudrate, timeout=0, write_timeout=5.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            errno = getattr(exc, "errno", None)
            reason = os.strerror(errno) if isinstance(errno, int) else (str(exc).splitlines() or [type(exc).__name__])[0]
            raise TransportError(f"cannot open serial port {port}: {reason}") from None
        self.port = port
        self.byte_time = 10.0 / baudrate
        try:
            self._fd = self._ser.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._ser.write(data)
            self._ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"serial port {self.port}: write failed: {exc}") from None

    def read(self, n: int, timeout: float) -> bytes:
        # The port stays non-blocking (pyserial timeout 0): changing pyserial's timeout
        # per call would reprogram the UART (tcsetattr) every time. Wait with select()
        # where the port has a file descriptor, else poll every millisecond.
        import serial

        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while True:
                waiting = self._ser.in_waiting
                if waiting:
                    return self._ser.read(min(n, waiting))
                left = deadline - time.monotonic()
                if left <= 0:
                    return b""
                if self._fd is None:
                    time.sleep(min(left, 0.001))
                elif select.select([self._fd], [], [], left)[0]:
                    data = self._ser.read(min(n, max(1, self._ser.in_waiting)))
                    if data:
                        return data
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"serial port {self.port}: read failed: {exc}") from None

    def reset_input(self) -> None:
        self._ser.reset_input_buffer()

    def close(self) -> None:
        self._ser.close()


class SocketTransport:
    """A TCP connection, e.g. to the simulated board on ``127.0.0.1``.

    Parameters
    ----------
    host, port
        Where the board listens.
    connect_timeout : float
        Seconds to wait for the connection.
    byte_time : float
        Seconds per byte to add to the link's timeouts (a slow simulation can
        take far longer than a real UART; 0 adds nothing).

    Raises
    ------
    TransportError
        If nobody listens there (one line, with the address).
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0, byte_time: float = 0.0):
        try:
            self._sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.address = f"{host}:{port}"
        self.byte_time = byte_time

    def write(self, data: bytes) -> None:
        try:
            self._sock.settimeout(None)
            self._sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"{self.address}: send failed: {exc.strerror or exc}") from None

    def read(self, n: int, timeout: float) -> bytes:
        try:
            self._sock.settimeout(max(timeout, 1e-6))
            data = self._sock.recv(n)
        except (socket.timeout, BlockingIOError):
            return b""
        except OSError as exc:
            raise TransportError(f"{self.address}: receive failed: {exc.strerror or exc}") from None
        if not data:
            raise TransportError(f"{self.address}: connection closed by the board")
        return data

    def reset_input(self) -> None:
        self._sock.setblocking(False)
        try:
            while self._sock.recv(65536):
                pass
        except (BlockingIOError, socket.timeout):
            pass
        except OSError:
            pass
        finally:
            self._sock.setblocking(True)

    def close(self) -> None:
        self._sock.close()


class InProcessTransport:
    """A Python stand-in for the board: ``handler(data) -> reply bytes``.

    Every ``write`` is passed to ``handler`` at once; what it returns is queued for
    ``read``. Time is virtual: ``read`` never sleeps, an empty queue is an
    immediate timeout (``b""``). ``on_timeout``, if given, is called then (a
    model can treat it as the line going quiet).
    """

    def __init__(self, handler: Callable[[bytes], bytes], *, on_timeout: Callable[[], None] | None = None):
        self._handler = handler
        self._on_timeout = on_timeout
        self._rx = bytearray()
        self.byte_time = 0.0
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self._rx += self._handler(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        if not self._rx:
            if self._on_timeout is not None:
                self._on_timeout()
            return b""
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def reset_input(self) -> None:
        self._rx.clear()

    def close(self) -> None:
        pass


def open_transport(spec: str, *, baudrate: int = DEFAULT_BAUD, byte_time: float = 0.0):
    """Open the transport named by ``spec``: ``tcp://HOST:PORT`` or a serial port.

    Raises
    ------
    TransportError
        If it cannot be opened (one line).
    """
    if spec.startswith("tcp://"):
        hostport = spec[len("tcp://"):]
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit():
            raise TransportError(f"bad socket address {spec!r}: expected tcp://HOST:PORT")
        return SocketTransport(host or "127.0.0.1", int(port), byte_time=byte_time)
    return SerialTransport(spec, baudrate)

