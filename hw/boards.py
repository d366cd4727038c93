"""The boards ``python -m hw.build --board NAME`` knows.

Each entry names an amaranth-boards platform and what the build needs beyond
it: the nextpnr device and package flags, the part's ``MULT18X18D`` and
``DP16KD`` counts, the default shape of the *engine probe* (P x Q multipliers;
the SoC's engine configuration is per part, :data:`hw.soc.SOC_PARAMS`), the
default probe/counter clock, ``ecppack`` options and the ``openFPGALoader`` board
name.

==============  ===========  =====  =====  ==========  ======================
name            part         DSPs   EBRs   probe       oscillator
==============  ===========  =====  =====  ==========  ======================
ulx3s           LFE5U-85F    156    208    8 x 8       25 MHz   (= ulx3s-85f)
ulx3s-45f       LFE5U-45F    72     108    8 x 9       25 MHz
ulx3s-25f       LFE5U-25F    28     56     4 x 7       25 MHz
ulx3s-12f       LFE5U-12F    28     56     4 x 6       25 MHz
orangecrab      LFE5U-25F    28     56     4 x 7       48 MHz   (r0.2, 25F)
orangecrab-85f  LFE5U-85F    156    208    8 x 8       48 MHz   (r0.2, 85F)
==============  ===========  =====  =====  ==========  ======================

All are ECP5 parts, speed grade 6 (OrangeCrab: 8). The 85F probe default is
8x8, the largest array measured to meet 150 MHz (``docs/BUILD.md``); ``--engine
12x13`` uses all 156 multipliers but reached 107 MHz. The OrangeCrab has no UART
resource in amaranth-boards, so the SoC is not built there.
"""

from dataclasses import dataclass

__all__ = ["Board", "BOARDS", "BOARD_ALIASES", "get_board", "board_names", "UnknownBoard"]


class UnknownBoard(ValueError):
    """The board name is not in :data:`BOARDS`; the message lists the valid names."""


@dataclass(frozen=True)
class Board:
    """One ``--board`` value.

    Attributes
    ----------
    name : str
    module, platform : str
        ``amaranth_boards.<module>.<platform>``, imported on demand.
    device : str
        Lattice part (``LFE5U-85F``).
    nextpnr_device : str
        nextpnr-ecp5 device flag (``--85k``).
    package : str
        nextpnr-ecp5 package (``CABGA381``).
    multipliers : int
        ``MULT18X18D`` on the part.
    block_rams : int
        ``DP16KD`` (18 Kbit EBR) on the part.
    engine : tuple[int, int]
        Default shape (P, Q) of the engine probe (``--core probe``); ``P * Q <= multipliers``.
    clock_mhz : float
        Default engine clock of the probe and the counter (the SoC's: :data:`hw.soc.SOC_CLOCK_MHZ`).
    ecppack_opts : tuple[str, ...]
    loader_board : str or None
        ``openFPGALoader -b`` name, ``None`` if the board is not programmed that way.
    """

    name: str
    module: str
    platform: str
    device: str
    nextpnr_device: str
    package: str
    multipliers: int
    block_rams: int
    engine: tuple
    clock_mhz: float = 150.0
    ecppack_opts: tuple = ("--compress",)
    loader_board: str | None = None

    def make_platform(self):
        import importlib
        mod = importlib.import_module(f"amaranth_boards.{self.module}")
        return getattr(mod, self.platform)()


#: Engine shape used by ``--reduced`` (a quick bitstream, e.g. for CI).
REDUCED_ENGINE = (2, 2)

BOARDS = {b.name: b for b in [
    Board("ulx3s", "ulx3s", "ULX3S_85F_Platform", "LFE5U-85F", "--85k", "CABGA381", 156, 208, (8, 8),
          loader_board="ulx3s"),
    Board("ulx3s-45f", "ulx3s", "ULX3S_45F_Platform", "LFE5U-45F", "--45k", "CABGA381", 72, 108, (8, 9),
          loader_board="ulx3s"),
    Board("ulx3s-25f", "ulx3s", "ULX3S_25F_Platform", "LFE5U-25F", "--25k", "CABGA381", 28, 56, (4, 7),
          loader_board="ulx3s"),
    Board("ulx3s-12f", "ulx3s", "ULX3S_12F_Platform", "LFE5U-12F", "--12k", "CABGA381", 28, 56, (4, 6),
          loader_board="ulx3s"),
    Board("orangecrab", "orangecrab_r0_2", "OrangeCrabR0_2_25FPlatform", "LFE5U-25F", "--25k", "CSFBGA285",
          28, 56, (4, 7), clock_mhz=100.0, ecppack_opts=("--compress", "--freq", "38.8"),
          loader_board="orangecrab"),
    Board("orangecrab-85f", "orangecrab_r0_2", "OrangeCrabR0_2_85FPlatform", "LFE5U-85F", "--85k", "CSFBGA285",
          156, 208, (8, 8), clock_mhz=100.0, ecppack_opts=("--compress", "--freq", "38.8"),
          loader_board="orangecrab"),
]}

#: Other spellings accepted for ``--board``.
BOARD_ALIASES = {"ulx3s-85f": "ulx3s", "orangecrab-25f": "orangecrab"}


def board_names() -> list:
    """Valid ``--board`` values (aliases included), sorted."""
    return sorted([*BOARDS, *BOARD_ALIASES])


def get_board(name: str) -> Board:
    """The :class:`Board` called ``name`` (case-insensitive).

    Raises
    ------
    UnknownBoard
        With a one-line message that lists the valid names.
    """
    key = str(name).lower()
    key = BOARD_ALIASES.get(key, key)
    try:
        return BOARDS[key]
    except KeyError:
        raise UnknownBoard(f"unknown board {name!r}; valid boards: {', '.join(board_names())}") from None
