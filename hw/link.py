"""Host link: a framed request/reply protocol from the UART to a memory-mapped bus.

The wire protocol is specified in ``docs/PROTOCOL.md`` and implemented a second
time, in Python, by ``host/protocol.py`` (whose :class:`~host.protocol.DeviceModel`
is a byte-exact model of :class:`LinkEngine`). In short::

    request  A5 5A | CMD SEQ ADDR[4] COUNT[2] | PAYLOAD[COUNT*4 if CMD & 0x40] | CRC[2]
    reply    A5 5A | CMD|0x80 SEQ LEN[2]      | PAYLOAD[LEN*4] | STATUS         | CRC[2]

little-endian fields, CRC-16/CCITT-FALSE over everything after the sync bytes,
sent high byte first.

Blocks
------
:class:`BusSignature`
    The link's memory bus: 32-bit *word* addresses, 32-bit words, no byte
    enables, ``valid``/``ready`` handshake (a target stalls by holding ``ready``
    low).
:class:`LinkEngine`
    Parses request frames from a byte stream, executes them on the bus, and
    sends replies to a byte stream.
:class:`HostLink`
    UART receiver + transmitter + :class:`LinkEngine`, pins to bus: what a board
    top (or the simulated board) instantiates.
:class:`BusRAM`
    A block-RAM target for the bus (scratch memory, tests).
"""


from amaranth import Array, C, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .uart import UARTReceiver, UARTTransmitter

__all__ = [
    "SYNC0", "SYNC1", "VERSION", "MAGIC", "Cmd", "Status", "BusSignature",
    "crc16_ccitt_step", "LinkEngine", "HostLink", "BusRAM",
]

SYNC0 = 0xA5
SYNC1 = 0x5A
#: Protocol version, reported by PING (must match ``host.protocol.VERSION``).
VERSION = 1
#: ``"SF"``: high half of the PING identification word.
MAGIC = 0x5346


class Cmd:
    """Command bytes (see ``host.protocol.Cmd``). Bit 6: payload follows; bit 0 of
    READ/WRITE: fixed address; bit 7 marks a reply."""

    PING = 0x01
    STATUS = 0x02
    READ = 0x10
    READ_FIXED = 0x11
    WRITE = 0x50
    WRITE_FIXED = 0x51
    HAS_PAYLOAD = 0x40
    REPLY = 0x80


class Status:
    """Reply status codes (see ``host.protocol.Status``)."""

    OK = 0x00
    BAD_CRC = 0x01
    BAD_LENGTH = 0x02
    UNKNOWN_CMD = 0x03
    BUS_TIMEOUT = 0x04


class BusSignature(wiring.Signature):
    """A minimal synchronous memory bus, seen from the initiator.

    One transfer per ``valid & ready`` cycle. The initiator raises ``valid`` with
    ``addr``, ``w_en`` and (for a write) ``w_data``, and holds them unchanged until
    ``ready``. The target raises ``ready`` when it has done the write, or, for a
    read, drives ``r_data`` in that same cycle. ``ready`` may depend on ``valid``
    combinationally; ``valid`` never depends on ``ready``. A target may hold
    ``ready`` low for as long as it needs; the link gives up after its bus
    timeout (and answers BUS_TIMEOUT), so a dead target never hangs the link.

    Members
    -------
    addr : Out(32)
        Word address (byte address / 4). Word-only: there are no byte enables.
    w_en : Out(1)
        1 for a write, 0 for a read.
    w_data : Out(32)
    valid : Out(1)
    ready : In(1)
    r_data : In(32)
    """

    def __init__(self):
        super().__init__({
            "addr": Out(32),
            "w_en": Out(1),
            "w_data": Out(32),
            "valid": Out(1),
            "ready": In(1),
            "r_data": In(32),
        })


def crc16_ccitt_step(crc, byte):
    """CRC-16/CCITT-FALSE update by one byte, as a combinational expression.

    ``crc`` is a 16-bit value, ``byte`` an 8-bit value; the result is the CRC
    after shifting in ``byte`` MSB first (poly 0x1021, no reflection). This is
    the gateware twin of ``host.protocol.crc16``.
    """
    for i in range(8):
        feedback = crc[15] ^ byte[7 - i]
        crc = Cat(C(0, 1), crc[:15]) ^ Mux(feedback, C(0x1021, 16), C(0, 16))
    return crc


_Header = data.StructLayout({"cmd": 8, "seq": 8, "addr": 32, "count": 16})


class LinkEngine(wiring.Component):
    """Request/reply packet engine between a byte stream pair and :class:`BusSignature`.

    Requests are parsed byte by byte; a WRITE payload is held in a buffer of
    ``max_words`` words and written to the bus only after the CRC checked out.
    READ data streams from the bus into the reply without a buffer. One request
    is handled at a time (stop-and-wait): bytes that arrive while a request
    executes or its reply goes out are dropped.

    Resynchronisation: the parser hunts for ``A5 5A``; a framing error or
    overrun (``rx_error``) and a pause of ``timeout_cycles`` inside a frame send
    it back to hunting. Every complete frame is answered: ACK, or NAK with
    BAD_CRC, BAD_LENGTH, UNKNOWN_CMD or BUS_TIMEOUT.

    Duplicate WRITEs: the sequence number and CRC of the last executed WRITE are
    remembered; an identical WRITE frame right after it (a host retry after a
    lost reply) is acknowledged without touching the bus. Any other good frame
    clears the memory.

    Parameters
    ----------
    max_words : int
        Largest READ/WRITE word count and WRITE buffer depth (1..65535).
    timeout_cycles : int
        Inter-byte timeout inside a frame, in clock cycles (>= 1).
    bus_timeout_cycles : int
        Cycles a bus access may wait for ``ready`` before it is abandoned (>= 1).
    ident : int
        32-bit word reported as the third PING word (design / build identifier).

    Members
    -------
    rx : In(stream.Signature(8))
        Received bytes (always ready).
    rx_error : In(1)
        Pulse: the UART dropped a byte (framing error, overrun).
    tx : Out(stream.Signature(8))
        Bytes to send.
    bus : Out(BusSignature())
    busy : Out(1)
        High while a frame is being received, executed or answered.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, *, max_words: int = 256, timeout_cycles: int, bus_timeout_cycles: int = 1 << 16,
                 ident: int = 0):
        if not 1 <= max_words <= 0xFFFF:
            raise ValueError(f"max_words must be 1..65535, not {max_words!r}")
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be at least 1, not {timeout_cycles!r}")
        if bus_timeout_cycles < 1:
            raise ValueError(f"bus_timeout_cycles must be at least 1, not {bus_timeout_cycles!r}")
        if not 0 <= ident <= 0xFFFF_FFFF:
            raise ValueError(f"ident must fit in 32 unsigned bits, not {ident!r}")
        self._max_words = max_words
        self._timeout_cycles = timeout_cycles
        self._bus_timeout_cycles = bus_timeout_cycles
        self._ident = ident
        super().__init__({
            "rx": In(stream.Signature(8)),
            "rx_error": In(1),
            "tx": Out(stream.Signature(8)),
            "bus": Out(BusSignature()),
            "busy": Out(1),
        })

    @property
    def max_words(self) -> int:
        return self._max_words

    @property
    def timeout_cycles(self) -> int:
        return self._timeout_cycles

    @property
    def bus_timeout_cycles(self) -> int:
        return self._bus_timeout_cycles

    def elaborate(self, platform):
        m = Module()
        maxw = self._max_words

        m.submodules.buf = buf = Memory(shape=32, depth=maxw, init=[])
        wp = buf.write_port()
        rp = buf.read_port(transparent_for=())

        rx_byte = self.rx.payload
        rx_fire = Signal()
        m.d.comb += [self.rx.ready.eq(1), rx_fire.eq(self.rx.valid)]

        # ---- request parser state
        hdr = Signal(_Header)
        hdr_next = Signal(_Header)
        m.d.comb += hdr_next.as_value().eq(Cat(hdr.as_value()[8:], rx_byte))
        hidx = Signal(range(8))          # header byte index
        word = Signal(32)                # payload word being assembled
        bidx = Signal(2)                 # byte within a word
        widx = Signal(16)                # payload words received
        crc = Signal(16, init=0xFFFF)    # running CRC of the request
        crc_next = Signal(16)
        m.d.comb += crc_next.eq(crc16_ccitt_step(crc, rx_byte))
        rx_crc = Signal(16)              # the CRC field as received (dedup key)
        idle = Signal(range(self._timeout_cycles + 1))

        # ---- duplicate-WRITE memory
        dup_valid = Signal()
        dup_seq = Signal(8)
        dup_crc = Signal(16)

        # ---- execution / reply state
        r_cmd = Signal(8)
        r_len = Signal(16)               # reply payload words
        r_status = Signal(8)
        r_from_bus = Signal()            # reply words come from the bus (READ) or the info mux
        r_step = Signal()                # address increment (0 for the FIXED commands)
        r_idx = Signal(16)
        r_addr = Signal(32)
        bus_failed = Signal()
        wbuf = Signal(32)
        w_data = Signal(32)              # the bus write word, registered off the buffer's block RAM
        w_near = Signal(32)              # its first register
        tbyte = Signal(2)
        tcrc = Signal(16)
        tx_crc_next = Signal(16)
        m.d.comb += tx_crc_next.eq(crc16_ccitt_step(tcrc, self.tx.payload))
        bus_timer = Signal(range(self._bus_timeout_cycles + 1))

        # ---- counters (16-bit, wrapping)
        names = ("frames_ok", "bad_crc", "rx_errors", "truncated", "dup_writes", "bus_timeouts")
        cnt = {n: Signal(16, name=f"cnt_{n}") for n in names}
        inc = {n: Signal(name=f"inc_{n}") for n in names}
        for n in names:
            with m.If(inc[n]):
                m.d.sync += cnt[n].eq(cnt[n] + 1)
        m.d.comb += inc["rx_errors"].eq(self.rx_error)

        is_ping = r_cmd == (Cmd.PING | Cmd.REPLY)
        info = Array([
            Mux(is_ping, C((MAGIC << 16) | VERSION, 32), Cat(cnt["frames_ok"], cnt["bad_crc"])),
            Mux(is_ping, C(maxw, 32), Cat(cnt["rx_errors"], cnt["truncated"])),
            Mux(is_ping, C(self._ident, 32), Cat(cnt["dup_writes"], cnt["bus_timeouts"])),
            C(0, 32),
        ])

        # the header's last word index as a register (hdr.count is complete before the first
        # payload word arrives), so the word counters' end tests are equalities of registers
        last_idx = Signal(16)
        m.d.sync += last_idx.eq(hdr.count - 1)
        m.d.comb += [
            wp.addr.eq(widx),
            wp.data.eq(Cat(word[8:], rx_byte)),
            rp.addr.eq(r_idx),
            self.bus.addr.eq(r_addr),
            self.bus.w_data.eq(w_data),
        ]

        def reply(status, length=0, from_bus=0):
            m.d.sync += [r_status.eq(status), r_len.eq(length), r_from_bus.eq(from_bus), r_idx.eq(0),
                         bus_failed.eq(0), tcrc.eq(0xFFFF)]
            m.next = "TX_SYNC0"

        def send(byte, next_state, with_crc=True):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte)]
            with m.If(self.tx.ready):
                if with_crc:
                    m.d.sync += tcrc.eq(tx_crc_next)
                m.next = next_state

        def bus_wait(on_done, on_timeout):
            """Count a bus access that is waiting; call the handlers on ready / timeout."""
            with m.If(self.bus.ready):
                m.d.sync += bus_timer.eq(0)
                on_done()
            with m.Elif(bus_timer == self._bus_timeout_cycles - 1):
                m.d.sync += bus_timer.eq(0)
                m.d.comb += inc["bus_timeouts"].eq(1)
                on_timeout()
            with m.Else():
                m.d.sync += bus_timer.eq(bus_timer + 1)

        with m.FSM() as fsm:
            # ---------------------------------------------------------- parse
            with m.State("HUNT"):
                m.d.sync += [crc.eq(0xFFFF), hidx.eq(0), widx.eq(0), bidx.eq(0)]
                with m.If(rx_fire & (rx_byte == SYNC0)):
                    m.next = "SYNC1"

            def abandon_on_errors():
                with m.If(self.rx_error):
                    m.next = "HUNT"
                with m.Elif(~rx_fire & (idle == self._timeout_cycles - 1)):
                    m.d.comb += inc["truncated"].eq(1)
                    m.next = "HUNT"

            with m.State("SYNC1"):
                with m.If(rx_fire):
                    with m.If(rx_byte == SYNC1):
                        m.next = "HEADER"
                    with m.Elif(rx_byte != SYNC0):
                        m.next = "HUNT"
                with m.Elif(self.rx_error | (idle == self._timeout_cycles - 1)):
                    m.next = "HUNT"   # an A5 alone is noise: not counted as a truncated frame

            with m.State("HEADER"):
                with m.If(rx_fire):
                    m.d.sync += [hdr.eq(hdr_next), crc.eq(crc_next), hidx.eq(hidx + 1)]
                    with m.If(hidx == 7):
                        with m.If(hdr_next.cmd[6] & (hdr_next.count != 0)):
                            m.next = "PAYLOAD"
                        with m.Else():
                            m.next = "CRC"
                abandon_on_errors()

            with m.State("PAYLOAD"):
                with m.If(rx_fire):
                    m.d.sync += [word.eq(Cat(word[8:], rx_byte)), crc.eq(crc_next), bidx.eq(bidx + 1)]
                    with m.If(bidx == 3):
                        # Words past max_words are received (for the CRC) but not stored.
                        m.d.comb += wp.en.eq(widx < maxw)
                        m.d.sync += widx.eq(widx + 1)
                        with m.If(widx == last_idx):
                            m.next = "CRC"
                abandon_on_errors()

            with m.State("CRC"):
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(crc_next), rx_crc.eq(Cat(rx_byte, rx_crc[:8])), bidx.eq(bidx + 1)]
                    with m.If(bidx[0]):
                        m.next = "CHECK"
                abandon_on_errors()

            # ---------------------------------------------------------- execute
            with m.State("CHECK"):
                cmd = hdr.cmd
                is_write = (cmd == Cmd.WRITE) | (cmd == Cmd.WRITE_FIXED)
                is_read = (cmd == Cmd.READ) | (cmd == Cmd.READ_FIXED)
                m.d.sync += [
                    r_cmd.eq(cmd | Cmd.REPLY),
                    r_addr.eq(hdr.addr),
                    r_step.eq(~cmd[0]),
                ]
                with m.If(crc != 0):
                    m.d.comb += inc["bad_crc"].eq(1)
                    reply(Status.BAD_CRC)
                with m.Else():
                    m.d.comb += inc["frames_ok"].eq(1)
                    with m.If(is_write & dup_valid & (dup_seq == hdr.seq) & (dup_crc == rx_crc)):
                        m.d.comb += inc["dup_writes"].eq(1)
                        reply(Status.OK)
                    with m.Else():
                        m.d.sync += dup_valid.eq(0)
                        with m.If((cmd == Cmd.PING) | (cmd == Cmd.STATUS)):
                            reply(Status.OK, length=3)
                        with m.Elif(~(is_read | is_write)):
                            reply(Status.UNKNOWN_CMD)
                        with m.Elif((hdr.count == 0) | (hdr.count > maxw)):
                            reply(Status.BAD_LENGTH)
                        with m.Elif(is_read):
                            reply(Status.OK, length=hdr.count, from_bus=1)
                        with m.Else():
                            m.d.sync += r_idx.eq(0)
                            m.next = "WRITE_FETCH"

            with m.State("WRITE_FETCH"):
                # rp.addr = r_idx: the buffer word is on rp.data from the next cycle on.
                m.next = "WRITE_LATCH"

            with m.State("WRITE_LATCH"):
                # the bus sees the word from two registers: the block RAM's clock-to-out (5.6 ns
                # on ECP5) stays off the engine's write-decode paths, and the first register is
                # free to sit beside the block (t46's logic ranking had this route among its first)
                m.d.sync += w_near.eq(rp.data)
                m.next = "WRITE_LATCH2"

            with m.State("WRITE_LATCH2"):
                m.d.sync += w_data.eq(w_near)
                m.next = "WRITE_BUS"

            with m.State("WRITE_BUS"):
                m.d.comb += [self.bus.valid.eq(1), self.bus.w_en.eq(1)]

                def done():
                    m.d.sync += [r_idx.eq(r_idx + 1), r_addr.eq(r_addr + r_step)]
                    with m.If(r_idx == last_idx):
                        m.d.sync += [dup_valid.eq(1), dup_seq.eq(hdr.seq), dup_crc.eq(rx_crc)]
                        reply(Status.OK)
                    with m.Else():
                        m.next = "WRITE_FETCH"

                bus_wait(done, lambda: reply(Status.BUS_TIMEOUT))

            # ---------------------------------------------------------- reply
            with m.State("TX_SYNC0"):
                send(SYNC0, "TX_SYNC1", with_crc=False)
            with m.State("TX_SYNC1"):
                send(SYNC1, "TX_CMD", with_crc=False)
            with m.State("TX_CMD"):
                send(r_cmd, "TX_SEQ")
            with m.State("TX_SEQ"):
                send(hdr.seq, "TX_LEN0")
            with m.State("TX_LEN0"):
                send(r_len[:8], "TX_LEN1")
            with m.State("TX_LEN1"):
                send(r_len[8:], "TX_WORD")

            with m.State("TX_WORD"):
                m.d.sync += tbyte.eq(0)
                with m.If(r_idx == r_len):
                    m.next = "TX_STATUS"
                with m.Elif(~r_from_bus):
                    m.d.sync += wbuf.eq(info[r_idx[:2]])
                    m.next = "TX_BYTES"
                with m.Elif(bus_failed):
                    m.d.sync += wbuf.eq(0)
                    m.next = "TX_BYTES"
                with m.Else():
                    m.d.comb += self.bus.valid.eq(1)

                    def got():
                        m.d.sync += wbuf.eq(self.bus.r_data)
                        m.next = "TX_BYTES"

                    def lost():
                        m.d.sync += [wbuf.eq(0), bus_failed.eq(1), r_status.eq(Status.BUS_TIMEOUT)]
                        m.next = "TX_BYTES"

                    bus_wait(got, lost)

            with m.State("TX_BYTES"):
                send(wbuf[:8], "TX_BYTES")
                with m.If(self.tx.ready):
                    m.d.sync += [wbuf.eq(wbuf >> 8), tbyte.eq(tbyte + 1)]
                    with m.If(tbyte == 3):
                        m.d.sync += [r_idx.eq(r_idx + 1), r_addr.eq(r_addr + r_step)]
                        m.next = "TX_WORD"

            with m.State("TX_STATUS"):
                send(r_status, "TX_CRC0")
            with m.State("TX_CRC0"):
                send(tcrc[8:], "TX_CRC1", with_crc=False)
            with m.State("TX_CRC1"):
                send(tcrc[:8], "HUNT", with_crc=False)

        m.d.comb += self.busy.eq(~fsm.ongoing("HUNT"))
        # Inter-byte timer: cycles since the last byte while a frame is being received.
        parsing = fsm.ongoing("SYNC1") | fsm.ongoing("HEADER") | fsm.ongoing("PAYLOAD") | fsm.ongoing("CRC")
        with m.If(parsing & ~rx_fire):
            m.d.sync += idle.eq(idle + 1)
        with m.Else():
            m.d.sync += idle.eq(0)
        return m


class HostLink(wiring.Component):
    """UART pins to the link bus: :class:`UARTReceiver` -> :class:`LinkEngine` -> :class:`UARTTransmitter`.

    Parameters
    ----------
    clk_freq : float
        ``sync`` clock frequency in Hz.
    baud : float
        UART baud rate (3 Mbaud for the ULX3S FT231X).
    max_words : int
        See :class:`LinkEngine`.
    timeout : float
        Inter-byte timeout in seconds (10 ms by default; USB-UART bridges leave
        gaps of about a millisecond between USB packets).
    timeout_cycles : int, optional
        The same in clock cycles; overrides ``timeout``.
    bus_timeout_cycles : int
        See :class:`LinkEngine`.
    ident : int
        See :class:`LinkEngine`.

    Members
    -------
    rx : In(1)
        UART receive pin (from the host).
    tx : Out(1)
        UART transmit pin (to the host).
    bus : Out(BusSignature())
    busy : Out(1)

    Raises
    ------
    ValueError
        If the baud rate cannot be made within 2 % at ``clk_freq``, or a parameter is out of range.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    bus: Out(BusSignature())
    busy: Out(1)

    def __init__(self, *, clk_freq: float, baud: float = 3_000_000, max_words: int = 256, timeout: float = 0.01,
                 timeout_cycles: int | None = None, bus_timeout_cycles: int = 1 << 16, ident: int = 0):
        self.uart_rx = UARTReceiver(clk_freq=clk_freq, baud=baud)
        self.uart_tx = UARTTransmitter(clk_freq=clk_freq, baud=baud)
        if timeout_cycles is None:
            timeout_cycles = max(1, round(timeout * clk_freq))
        self.engine = LinkEngine(max_words=max_words, timeout_cycles=timeout_cycles,
                                 bus_timeout_cycles=bus_timeout_cycles, ident=ident)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = self.uart_rx
        m.submodules.uart_tx = utx = self.uart_tx
        m.submodules.engine = eng = self.engine
        m.d.comb += [
            urx.rx.eq(self.rx),
            self.tx.eq(utx.tx),
            eng.rx_error.eq(urx.frame_error | urx.overrun),
            self.busy.eq(eng.busy),
        ]
        wiring.connect(m, urx.o, eng.rx)
        wiring.connect(m, eng.tx, utx.i)
        wiring.connect(m, eng.bus, wiring.flipped(self.bus))
        return m


class BusRAM(wiring.Component):
    """A block RAM on the link bus: one word per address, ``ready`` one cycle after ``valid``.

    Only the low ``ceil(log2(depth))`` address bits are decoded (the RAM repeats
    through the address space).

    Parameters
    ----------
    depth : int
        Number of 32-bit words (>= 2).
    init : sequence of int
        Initial contents.

    Members
    -------
    bus : In(BusSignature())
    """

    def __init__(self, *, depth: int, init=()):
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth!r}")
        self._depth = depth
        self._init = list(init)
        super().__init__({"bus": In(BusSignature())})

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=self._depth, init=self._init)
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=())
        abits = (self._depth - 1).bit_length()
        ack = Signal()
        m.d.sync += ack.eq(self.bus.valid & ~ack)
        m.d.comb += [
            rp.addr.eq(self.bus.addr[:abits]),
            wp.addr.eq(self.bus.addr[:abits]),
            wp.data.eq(self.bus.w_data),
            wp.en.eq(self.bus.valid & ack & self.bus.w_en),
            self.bus.ready.eq(ack),
            self.bus.r_data.eq(rp.data),
        ]
        return m
