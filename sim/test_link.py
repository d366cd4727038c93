"""Tests of the host link gateware: UART, CRC, packet engine.

* ``test_crc_matches_python`` — the gateware CRC step against ``host.protocol.crc16``
  (Amaranth simulator, no build);
* ``test_engine_matches_model`` — ``LinkEngine`` fed byte streams directly, every
  reply byte compared with ``host.protocol.DeviceModel`` (Amaranth simulator);
* ``test_link_rtl`` — cocotb on Verilator (``sim/tb_link.py``): real UART bit
  timing at 6 clocks per bit into ``HostLink`` + ``BusRAM``: random writes/reads,
  NAKs, resync after garbage / truncated frames / framing errors, duplicate
  WRITEs, bus timeouts;
* ``test_link_rtl_3mbaud`` — the same top at 50 MHz and 3 Mbaud (divisor 17,
  -1.96 %) driven with exact 3 Mbaud host timing.

``SHIFTFPGA_SEED=<n>`` reproduces a run (printed on every run).
"""

import random

import pytest
from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from host.protocol import Cmd, DeviceModel, crc16, encode_request
from hw.link import BusRAM, HostLink, LinkEngine, crc16_ccitt_step
from hw.uart import UARTReceiver, UARTTransmitter, uart_divisor
from sim.harness import run_cocotb, seed_from_env


class LinkTestTop(wiring.Component):
    """``HostLink`` on a ``BusRAM``, with a bus staller for the testbench.

    Members
    -------
    rx : In(1)
    tx : Out(1)
    stall_rand : In(1)
        Insert pseudo-random wait states (an LFSR gates the handshake about half the time).
    hang : In(1)
        The bus never answers.
    """

    def __init__(self, *, clk_freq, baud, max_words, mem_depth, timeout_cycles=None, bus_timeout, ident):
        self.link = HostLink(clk_freq=clk_freq, baud=baud, max_words=max_words, timeout_cycles=timeout_cycles,
                             bus_timeout_cycles=bus_timeout, ident=ident)
        self.ram = BusRAM(depth=mem_depth)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "stall_rand": In(1), "hang": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.ram = ram = self.ram
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq((lfsr >> 1) ^ (0xB400 * lfsr[0]))
        gate = ~self.hang & ~(self.stall_rand & lfsr[0])
        m.d.comb += [
            link.rx.eq(self.rx),
            self.tx.eq(link.tx),
            ram.bus.addr.eq(link.bus.addr),
            ram.bus.w_en.eq(link.bus.w_en),
            ram.bus.w_data.eq(link.bus.w_data),
            ram.bus.valid.eq(link.bus.valid & gate),
            link.bus.ready.eq(ram.bus.ready & gate),
            link.bus.r_data.eq(ram.bus.r_data),
        ]
        return m


# ----------------------------------------------------------------- no build needed

def test_divisor_validation():
    assert uart_divisor(48e6, 3e6) == 16
    assert uart_divisor(50e6, 3e6) == 17            # -1.96 %: accepted
    assert uart_divisor(25e6, 115200) == 217
    with pytest.raises(ValueError, match="off"):
        uart_divisor(40e6, 3e6)                     # 13 -> +2.56 %
    with pytest.raises(ValueError, match="too slow"):
        uart_divisor(10e6, 3e6)
    with pytest.raises(ValueError, match="positive"):
        uart_divisor(0, 3e6)
    rx = UARTReceiver(clk_freq=50e6, baud=3e6)
    assert rx.divisor == 17 and abs(rx.baud_error + 0.0196) < 1e-3
    with pytest.raises(ValueError):
        HostLink(clk_freq=40e6, baud=3e6)
    with pytest.raises(ValueError, match="max_words"):
        LinkEngine(max_words=0, timeout_cycles=10)


def test_constants_match_host():
    """hw.link and host.protocol spell the same protocol."""
    import host.protocol as hp
    import hw.link as hl

    assert bytes([hl.SYNC0, hl.SYNC1]) == hp.SYNC
    assert (hl.VERSION, hl.MAGIC) == (hp.VERSION, hp.MAGIC)
    for c in hp.Cmd:
        assert getattr(hl.Cmd, c.name) == c.value, c
    for st in hp.Status:
        assert getattr(hl.Status, st.name) == st.value, st
    assert (hl.Cmd.HAS_PAYLOAD, hl.Cmd.REPLY) == (hp.CMD_HAS_PAYLOAD, hp.CMD_REPLY)


class _UARTLoop(wiring.Component):
    """TX -> RX at 4 clocks per bit, with a line override for the testbench."""

    def __init__(self):
        self.utx = UARTTransmitter(clk_freq=4e6, baud=1e6)
        self.urx = UARTReceiver(clk_freq=4e6, baud=1e6)
        super().__init__({"force": In(1), "force_val": In(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.utx, m.submodules.urx = self.utx, self.urx
        m.d.comb += self.urx.rx.eq(Mux(self.force, self.force_val, self.utx.tx))
        return m


def test_uart_loopback_and_flags():
    """Back-to-back bytes through TX -> RX at the smallest divisor (4): no gap between
    bytes, every byte received; a full output register gives ``overrun``; a low stop
    bit gives ``frame_error`` and the receiver recovers after the break."""
    seed = seed_from_env()
    rng = random.Random(seed)
    dut = _UARTLoop()
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.getrandbits(8) for _ in range(28)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got, when, flags = [], [], {"overrun": 0, "frame_error": 0}

    async def sender(ctx):
        for b in data:
            ctx.set(dut.utx.i.valid, 1)
            ctx.set(dut.utx.i.payload, b)
            await ctx.tick().until(dut.utx.i.ready)
        ctx.set(dut.utx.i.valid, 0)

    async def receiver(ctx):
        ctx.set(dut.urx.o.ready, 1)
        cycle = 0
        async for _, _, valid, payload, ovr, ferr in ctx.tick().sample(
                dut.urx.o.valid, dut.urx.o.payload, dut.urx.overrun, dut.urx.frame_error):
            cycle += 1
            if valid:
                got.append(payload)
                when.append(cycle)
            flags["overrun"] += ovr
            flags["frame_error"] += ferr

    async def tb(ctx):
        await ctx.tick().repeat(40 * len(data) + 60)
        assert got == data, f"seed {seed}: sent {bytes(data).hex()}, received {bytes(got).hex()}"
        assert {b - a for a, b in zip(when, when[1:])} == {40}, when   # 10 bits x 4 cycles, no gaps
        assert flags == {"overrun": 0, "frame_error": 0}
        # Overrun: stop taking bytes, send two.
        ctx.set(dut.urx.o.ready, 0)
        for b in (0x12, 0x34):
            ctx.set(dut.utx.i.valid, 1)
            ctx.set(dut.utx.i.payload, b)
            await ctx.tick().until(dut.utx.i.ready)
        ctx.set(dut.utx.i.valid, 0)
        await ctx.tick().repeat(100)
        assert flags["overrun"] == 1 and ctx.get(dut.urx.o.payload) == 0x12
        ctx.set(dut.urx.o.ready, 1)
        await ctx.tick().repeat(2)
        # Framing error: start bit, 8 data bits, low stop bit, a long break.
        ctx.set(dut.force, 1)
        for bit in [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]:
            ctx.set(dut.force_val, bit)
            await ctx.tick().repeat(4)
        await ctx.tick().repeat(40)
        ctx.set(dut.force_val, 1)
        await ctx.tick().repeat(8)
        ctx.set(dut.force, 0)
        assert flags["frame_error"] == 1
        n = len(got)
        ctx.set(dut.utx.i.valid, 1)
        ctx.set(dut.utx.i.payload, 0x5A)
        await ctx.tick().until(dut.utx.i.ready)
        ctx.set(dut.utx.i.valid, 0)
        await ctx.tick().repeat(60)
        assert got[n:] == [0x5A] and flags["frame_error"] == 1

    sim.add_testbench(sender)
    sim.add_process(receiver)
    sim.add_testbench(tb)
    sim.run()


def test_crc_matches_python():
    """The gateware CRC step, chained over random messages, equals crc16()."""
    seed = seed_from_env()
    rng = random.Random(seed)
    crc_in, byte, crc_out = Signal(16), Signal(8), Signal(16)
    m = Module()
    m.d.comb += crc_out.eq(crc16_ccitt_step(crc_in, byte))
    sim = Simulator(m)
    messages = [b"123456789", b"", bytes(range(256))] + [rng.randbytes(rng.randint(1, 40)) for _ in range(20)]

    async def tb(ctx):
        for msg in messages:
            crc = 0xFFFF
            for b in msg:
                ctx.set(crc_in, crc)
                ctx.set(byte, b)
                crc = ctx.get(crc_out)
            assert crc == crc16(msg), f"seed {seed}: {msg.hex()}: gateware {crc:#06x}, python {crc16(msg):#06x}"
        assert crc16(b"123456789") == 0x29B1

    sim.add_testbench(tb)
    sim.run()


class _EngineTop(wiring.Component):
    def __init__(self, max_words):
        self.eng = LinkEngine(max_words=max_words, timeout_cycles=40, bus_timeout_cycles=16, ident=0x600DF00D)
        self.ram = BusRAM(depth=64)
        super().__init__({"hang": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.eng, m.submodules.ram = self.eng, self.ram
        wiring.connect(m, self.eng.bus, self.ram.bus)
        with m.If(self.hang):
            m.d.comb += [self.ram.bus.valid.eq(0), self.eng.bus.ready.eq(0)]
        return m


def test_engine_matches_model():
    """Random request sequences (good, corrupted, truncated, duplicate, unknown, too long,
    hung bus): the engine's reply bytes equal DeviceModel's, byte for byte."""
    seed = seed_from_env()
    rng = random.Random(seed)
    maxw = 8
    top = _EngineTop(maxw)
    hung = set()
    model = DeviceModel(max_words=maxw, ident=0x600DF00D,
                        read_hook=lambda a: None if hung else model.mem.get(a % 64, 0),
                        write_hook=lambda a, w: not hung and model.mem.__setitem__(a % 64, w) is None)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    eng = top.eng

    async def tb(ctx):
        async def send(data, gap=0):
            for b in data:
                ctx.set(eng.rx.valid, 1)
                ctx.set(eng.rx.payload, b)
                await ctx.tick()
                ctx.set(eng.rx.valid, 0)
                for _ in range(gap):
                    await ctx.tick()

        async def receive():
            got, idle = bytearray(), 0
            while idle < 200:
                ready = rng.random() < 0.7
                ctx.set(eng.tx.ready, ready)
                valid, payload = ctx.get(eng.tx.valid), ctx.get(eng.tx.payload)
                await ctx.tick()
                if ready and valid:
                    got.append(payload)
                    idle = 0
                else:
                    idle += 1
            ctx.set(eng.tx.ready, 0)
            return bytes(got)

        seq, last = 0, b""
        for trial in range(40):
            seq = (seq + 1) & 0xFF
            kind = rng.choice(["write", "write", "read", "fixed", "ping", "status", "dup", "crc", "unknown",
                               "long", "trunc", "hang"])
            n = rng.randint(1, maxw)
            addr = rng.randrange(200)
            words = [rng.getrandbits(32) for _ in range(n)]
            if kind == "dup" and last:
                frame = last
            elif kind in ("write", "hang"):
                frame = encode_request(Cmd.WRITE, seq, addr, n, words)
            elif kind == "read":
                frame = encode_request(Cmd.READ, seq, addr, n)
            elif kind == "fixed":
                cmd = rng.choice([Cmd.READ_FIXED, Cmd.WRITE_FIXED])
                frame = encode_request(cmd, seq, addr, n, words if cmd == Cmd.WRITE_FIXED else [])
            elif kind == "ping":
                frame = encode_request(Cmd.PING, seq)
            elif kind == "status":
                frame = encode_request(Cmd.STATUS, seq)
            elif kind == "unknown":
                cmd = rng.choice([0x00, 0x05, 0x42, 0x7E])
                frame = encode_request(cmd, seq, 0, 1, [1] if cmd & 0x40 else [])
            elif kind == "long":
                frame = encode_request(Cmd.WRITE, seq, addr, maxw + 2, [7] * (maxw + 2))
            else:
                frame = bytearray(encode_request(Cmd.WRITE, seq, addr, n, words))
                frame[rng.randrange(10, len(frame))] ^= 1 << rng.randrange(8)
                frame = bytes(frame)
            if kind == "trunc":
                part = frame[:rng.randint(3, len(frame) - 1)]
                await send(part)
                model.feed(part)
                model.line_idle()
                for _ in range(60):
                    await ctx.tick()
            if kind == "hang":
                hung.add(1)
                ctx.set(top.hang, 1)
            # A "write" is sent twice in half the cases: the second copy is a host retry
            # and must be ACKed from the duplicate memory, even with the bus hung.
            for copy in range(2 if kind == "write" and rng.random() < 0.5 else 1):
                if copy:
                    hung.add(1)
                    ctx.set(top.hang, 1)
                expected = model.feed(frame)
                await send(frame, gap=rng.choice([0, 0, 1, 5]))
                got = await receive()
                assert got == expected, (
                    f"seed {seed} trial {trial} ({kind}, copy {copy}): got {got.hex()}, expected {expected.hex()}")
                hung.clear()
                ctx.set(top.hang, 0)
            if frame[2] in (Cmd.WRITE, Cmd.WRITE_FIXED):
                last = frame

    sim.add_testbench(tb)
    sim.run()


# ----------------------------------------------------------------- Verilator

#: 6 clocks per bit at 100 MHz, a 32-word buffer, a 128-word RAM.
FAST = dict(clk_ns=10, bit_ns=60, max_words=32, mem_depth=128, timeout_cycles=300, bus_timeout=64,
            ident=0x1234ABCD, transfers=16)


@pytest.mark.sim
def test_link_rtl():
    top = LinkTestTop(clk_freq=100e6, baud=100e6 / 6, max_words=FAST["max_words"], mem_depth=FAST["mem_depth"],
                      timeout_cycles=FAST["timeout_cycles"], bus_timeout=FAST["bus_timeout"], ident=FAST["ident"])
    assert top.link.uart_rx.divisor == 6
    run_cocotb(top, test_module="tb_link", build_name="link_fast", env={"TB_LINK": {**FAST, "mode": "full"}})


@pytest.mark.sim
def test_link_rtl_3mbaud():
    """The board configuration: 50 MHz, 3 Mbaud, 256-word frames, 10 ms inter-byte timeout."""
    top = LinkTestTop(clk_freq=50e6, baud=3e6, max_words=256, mem_depth=512, bus_timeout=1 << 16, ident=0)
    assert top.link.uart_rx.divisor == 17
    cfg = dict(clk_ns=20, bit_ns=1000 / 3, max_words=256, mem_depth=512, timeout_cycles=top.link.engine.timeout_cycles,
               bus_timeout=1 << 16, ident=0, mode="baud")
    run_cocotb(top, test_module="tb_link", build_name="link_3mbaud", env={"TB_LINK": cfg})
