"""A pseudo-terminal in front of a simulated board's TCP port.

The simulated board listens on a TCP port; a real board is a serial device.
:class:`PtyRelay` gives the simulated board a serial device too: it opens a
pseudo-terminal pair, puts the slave side in raw mode, and copies bytes
between the master side and one TCP connection to the board, so that host
tools open ``/dev/pts/N`` with pyserial exactly as they open ``/dev/ttyUSB0``
(``python host/run.py --port /dev/pts/N``). The baud rate set on the pty is
ignored; bytes move as fast as the simulation takes them.

Linux and macOS only (``os.openpty``).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
import tty

__all__ = ["PtyRelay"]


class PtyRelay:
    """Relay between a new pseudo-terminal and ``tcp://host:port`` (a context manager).

    Attributes
    ----------
    path : str
        The serial device to open (``/dev/pts/N``).
    """

    def __init__(self, host: str, port: int):
        self._sock = socket.create_connection((host, port), timeout=5.0)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setblocking(False)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="pty-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._master, selectors.EVENT_READ, "pty")
        sel.register(self._sock, selectors.EVENT_READ, "tcp")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "pty":
                        try:
                            data = os.read(self._master, 65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:      # slave side closed by everybody: wait for the next opener
                            data = b""
                        if data:
                            self._sock.setblocking(True)
                            self._sock.sendall(data)
                            self._sock.setblocking(False)
                    else:
                        try:
                            data = self._sock.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            return                 # the board went away
                        view = memoryview(data)
                        while view:
                            try:
                                view = view[os.write(self._master, view):]
                            except BlockingIOError:
                                time.sleep(0.001)   # the pty's buffer is full: let the reader drain it
        except OSError:
            return
        finally:
            sel.close()

    def close(self) -> None:
        if self._stop_w is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=2.0)
            for fd in (self._master, self._slave, self._stop_r, self._stop_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._sock.close()
            self._stop_w = None

    def __enter__(self) -> "PtyRelay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
