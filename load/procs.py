"""Child-process and machine helpers shared by the load tools and the tests."""
from __future__ import annotations

import platform
import signal
import subprocess
from pathlib import Path


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


def exit_on_sigterm() -> None:
    """SIGTERM ends this process like Ctrl-C does: with an exception, so ``finally`` blocks run and
    the servers it started (Kafka, Weaviate, the registry: each in its own session, so they do not
    get the signal) are stopped instead of being left behind."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), for benchmark and reference records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
