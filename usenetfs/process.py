"""Whether a process is still running: one answer for the INN harness and the mount daemon.

`kill(pid, 0)` succeeds on a zombie (killed, not yet reaped by its parent), so the state
letter in /proc/PID/stat decides instead.
"""


def process_alive(pid) -> bool:
    """Is `pid` a running process? A zombie (Z) or a dead one (X) is not."""
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
