"""Whether a process of this machine is still running, for the stages that clean up after a killed one.

Why one place: the atomic writer's temporaries, the activation store's claims and the tracking store's RUNNING
runs all carry the pid of the process that made them, and each decides "its writer is gone" the same way.
"""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine exists.

    Why signal 0: it checks existence and permission without delivering anything. A process owned by another
    user answers PermissionError, and is alive.

    Args:
        pid: The process id (positive).

    Returns:
        True when the process exists, whoever owns it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
