"""Drive the engine over the link: identify it, load a compiled program, run inferences.

Everything is a read or a write on the link bus (docs/PROTOCOL.md); the memory
map and the register set are :mod:`hw.engine_params`. Typical use::

    link = Link(open_transport(address))
    acc = Accelerator(link)                        # reads the engine's parameters
    compiled = compile_program(program, acc.params)
    acc.load(compiled, progress=True)
    result = acc.infer(x_q)                        # logits + cycles per layer
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hw.engine_params import ENGINE_ID, ENGINE_VERSION, Csr, EngineParams, Region, parts_for, region_addr

from .compile import CompiledProgram, TensorPlace, pack_activation, pack_entries, unpack_activation, unpack_logits
from .protocol import LinkError

__all__ = ["Accelerator", "InferenceResult", "AcceleratorError"]


class AcceleratorError(LinkError):
    """The device is not an engine we can drive, or a run did not finish (one-line message)."""


@dataclass
class InferenceResult:
    """What one run produced: logits (flattened), cycles per layer, array beats per layer."""

    logits: np.ndarray
    layer_cycles: list[int]
    layer_beats: list[int]
    total_cycles: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class Accelerator:
    """The engine behind a :class:`host.protocol.Link`.

    Raises
    ------
    AcceleratorError
        If the device does not identify as this engine version.
    """

    def __init__(self, link, *, run_timeout: float = 60.0):
        self.link = link
        self.run_timeout = run_timeout
        head = link.read(region_addr(Region.CSR, Csr.ID), 2)
        if head[0] != ENGINE_ID:
            raise AcceleratorError(f"the device is not a shiftfpga engine (id 0x{head[0]:08x})")
        if head[1] != ENGINE_VERSION:
            raise AcceleratorError(f"engine version {head[1]}, this host speaks version {ENGINE_VERSION}")
        words = link.read(region_addr(Region.CSR, Csr.PARAMS), EngineParams.n_words())
        self.params = EngineParams.from_words(words)
        self._loaded: CompiledProgram | None = None

    def load(self, compiled: CompiledProgram, *, progress: bool = False) -> None:
        """Upload descriptors, schedules, tables and weights."""
        if compiled.params != self.params:
            raise AcceleratorError("the program was compiled for another engine configuration")
        self._wait_idle()
        for addr, words in compiled.uploads:
            if words:
                self.link.write(addr, words, progress=progress)
        self._loaded = compiled

    def infer(self, x_q: np.ndarray, *, keep_all: bool = False) -> InferenceResult:
        """Write the quantised HWC input, run every layer, read logits and counters.

        With ``keep_all`` (compile with ``keep_all=True``), also read back every tensor.
        """
        c = self._loaded
        if c is None:
            raise AcceleratorError("no program loaded")
        place = c.input_place
        x_q = np.asarray(x_q)
        if tuple(x_q.shape) != place.shape:
            raise AcceleratorError(f"input has shape {tuple(x_q.shape)}, the program expects {place.shape}")
        L = self.params.lanes
        self.link.write(region_addr(Region.ACT, place.base * parts_for(8 * L)),
                        pack_entries(pack_activation(x_q, L), 8 * L))
        self.link.write(region_addr(Region.CSR, Csr.CONTROL), [c.n_layers])
        self._wait_idle()
        total = self.link.read(region_addr(Region.CSR, Csr.TOTAL_CYCLES), 1)[0]
        counts = self.link.read(region_addr(Region.COUNTERS), 2 * c.n_layers)
        outputs = {}
        if keep_all:
            for name, pl in c.places.items():
                outputs[name] = self.read_tensor(pl)
        logits = self.read_tensor(c.output_place).reshape(-1)
        return InferenceResult(logits=logits, layer_cycles=counts[0::2], layer_beats=counts[1::2],
                               total_cycles=total, outputs=outputs)

    def read_tensor(self, place: TensorPlace) -> np.ndarray:
        """Read a tensor back from the activation or logits memory."""
        L = self.params.lanes
        width = 8 * L if place.region == Region.ACT else 32 * L
        k = parts_for(width)
        words = self.link.read(region_addr(place.region, place.base * k), place.words * k)
        entries = [sum(words[i * k + j] << (32 * j) for j in range(k)) for i in range(place.words)]
        if place.region == Region.ACT:
            return unpack_activation(entries, place.shape, L, place.signed)
        return unpack_logits(entries, place.shape, L)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.run_timeout
        while True:
            status = self.link.read(region_addr(Region.CSR, Csr.STATUS), 1)[0]
            if not status & 1:
                return
            if time.monotonic() > deadline:
                raise AcceleratorError(f"the engine is still busy (layer {status >> 16}) after "
                                       f"{self.run_timeout:.0f} s")
            time.sleep(0.001)
