"""Drive a bus target (the engine) in Amaranth's own simulator from ordinary host code.

The host side (:class:`host.accelerator.Accelerator`) is synchronous code that
calls ``link.read`` / ``link.write``; Amaranth testbenches are coroutines. This
module runs the simulation in the calling thread and the host code in a worker
thread, passing bus transactions through a queue, so that exactly the code
that drives a real board drives the RTL — no Verilator, no C++ compiler. It is
slow (thousands of cycles per second), so it suits small engines and small
programs: the fast path for whole networks is the Verilator-built simulated
board (:mod:`sim.board`).

Use::

    def host(link):
        acc = Accelerator(link)
        ...
        return result

    result = run_with_bus(Engine(params), host)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from amaranth.sim import Simulator

__all__ = ["QueueLink", "run_with_bus"]

_STOP = object()


class QueueLink:
    """A ``Link``-compatible object (``read``, ``write``) whose transactions go to the simulator thread."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()

    def read(self, addr: int, n: int, **_kw) -> list[int]:
        self.requests.put(("r", addr, n))
        return self.replies.get()

    def write(self, addr: int, words, **_kw) -> None:
        self.requests.put(("w", addr, [int(w) for w in words]))
        self.replies.get()


def run_with_bus(dut, host: Callable[[QueueLink], object], *, clock_period: float = 1e-8):
    """Simulate ``dut`` (a component with a ``bus`` member) while ``host(link)`` runs; return its result.

    Exceptions raised by ``host`` are re-raised here.
    """
    link = QueueLink()
    outcome: dict = {}

    def worker():
        try:
            outcome["value"] = host(link)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            link.requests.put(_STOP)

    async def bench(ctx):
        bus = dut.bus
        while True:
            try:
                request = link.requests.get_nowait()
            except queue.Empty:
                await ctx.tick()
                continue
            if request is _STOP:
                return
            kind, addr, arg = request
            words = arg if kind == "w" else range(arg)
            out = []
            for i, word in enumerate(words):
                ctx.set(bus.addr, addr + i)
                ctx.set(bus.w_en, kind == "w")
                ctx.set(bus.w_data, word if kind == "w" else 0)
                ctx.set(bus.valid, 1)
                while True:
                    await ctx.delay(clock_period / 4)     # let combinational ready/r_data settle
                    ready, data = ctx.get(bus.ready), ctx.get(bus.r_data)
                    await ctx.tick()
                    if ready:
                        break
                out.append(data)
            ctx.set(bus.valid, 0)
            link.replies.put(out if kind == "r" else None)

    sim = Simulator(dut)
    sim.add_clock(clock_period)
    sim.add_testbench(bench)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    sim.run()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
