"""``vggrpo train`` in this process, killed by itself with SIGKILL just before its N-th rename of
a file or folder into place (os.replace / os.rename), for the fault-injection test
(tests/test_fault_injection.py). N = 0: no kill.

    python tests/scripts/kill_worker.py N train --config ... --out ... [--resume]

Renames are where a checkpoint becomes visible, so a kill before each one is a kill at every
boundary between two files of a checkpoint (and of its exports). One torch thread, so a run
is bitwise reproducible across processes.
"""

import os
import signal
import sys

import torch


def _kill_before(n: int) -> None:
    calls = [0]

    def wrap(fn):
        def renamed(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return renamed

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if int(sys.argv[1]) > 0:
        _kill_before(int(sys.argv[1]))
    from vggrpo.cli import main

    raise SystemExit(main(sys.argv[2:]))
