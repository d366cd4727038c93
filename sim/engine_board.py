"""``python -m sim.engine_board``: run the simulated engine board until Ctrl-C, for host tools.

``python host/run.py`` starts a simulated board by itself; this command keeps
one running instead, the way a real board sits on a USB port, so that host
tools can connect with ``--port`` like to hardware::

    python -m sim.engine_board --pty          # prints e.g. "serial device /dev/pts/5"
    python host/run.py --model shiftresnet20 --port /dev/pts/5

    python -m sim.engine_board --port 5555    # TCP only
    python host/run.py --model shiftresnet20 --port tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import sys
import time

from sim.board import BoardError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.engine_board", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free port)")
    ap.add_argument("--pty", action="store_true", help="also offer a pseudo-terminal (a serial device) relayed to it")
    args = ap.parse_args(argv)

    from hw.soc import SIM_PARAMS, simulated_board

    board = simulated_board(SIM_PARAMS, progress=lambda s: print(s, flush=True), port=args.port, idle_exit=0)
    relay = None
    try:
        with board:
            print(f"simulated engine board listening at {board.address}", flush=True)
            if args.pty:
                from sim.pty_relay import PtyRelay

                relay = PtyRelay("127.0.0.1", board.port)
                print(f"serial device {relay.path}", flush=True)
            print("Ctrl-C stops it", flush=True)
            while board.running:
                time.sleep(0.2)
            board.check()
    except BoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if relay is not None:
            relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
