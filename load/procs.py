"""Child-process helpers shared by the load tools and the tests."""
from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> bool:
    """Send ``sig`` to a running ``proc`` and wait up to ``timeout`` s; kill it if it does not exit.

    Returns True when the process exited on its own (or had already), False when it was killed.
    """
    if proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
