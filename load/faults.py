"""Test-only fault injection: ``python -m load.faults`` is ``embedstream worker`` with one plain
exception raised at a chosen stage (used by ``load/crash_harness.py --faults`` and the tests).

    EMBEDSTREAM_TEST_FAULT=store-states:3 python -m load.faults   # the 3rd put_states call raises
    EMBEDSTREAM_TEST_FAULT=store-outage:2:30 python -m load.faults # from the 2nd batch on, this worker's
                                                                   # store is down for 30 s (transient)

Nothing under ``app/`` imports this module, and production runs ``embedstream worker``: there is
no setting or environment variable that turns faults on in the real worker. The patches wrap the
real code (the stage still runs on every other call), so what is tested is the worker's own
reaction to an ordinary exception: fail closed (exit 70), nothing past the failure acked, and the
next incarnation converges.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("embedstream.faults")

ENV = "EMBEDSTREAM_TEST_FAULT"


class InjectedFault(RuntimeError):
    """A plain exception, raised where the worker would meet a bug."""


def _targets():
    from app.agents import FaustSource
    from app.alerts import DriftStage
    from app.pipeline import Processor
    from app.store.base import FingerprintMismatch
    from app.store.lancedb import LanceDBStore

    return {
        # stage: (owner, attribute, exception factory, when (args -> bool) or None)
        "prepare": (Processor, "prepare", None, None),  # before anything of the batch is done
        "encode": (Processor, "_encode", None, None),
        "store-chunks": (LanceDBStore, "write_chunks", None, None),
        "store-states": (LanceDBStore, "put_states", None, None),
        "store-permanent": (LanceDBStore, "write_chunks",
                            lambda: FingerprintMismatch("injected: collection holds another model's vectors"), None),
        "drift": (DriftStage, "observe", None, None),
        "dlq-send": (FaustSource, "send", None, lambda a, kw: "dlq" in str(a[1] if len(a) > 1 else kw.get("topic"))),
        "ack": (FaustSource, "ack", None, None),
    }


STAGES = ("prepare", "encode", "store-chunks", "store-states", "store-permanent", "drift", "dlq-send", "ack")


def install_outage(nth: int, seconds: float) -> None:
    """From the write of this process's ``nth`` batch on, every LanceDB call raises
    TransientStoreError for ``seconds``: a store outage only this worker sees (the other workers of
    a test keep theirs), which the worker must ride out by retrying."""
    import functools
    import time

    from app.pipeline import Processor
    from app.store.base import TransientStoreError
    from app.store.lancedb import LanceDBStore

    state = {"batches": 0, "until": None}
    commit = Processor.commit

    @functools.wraps(commit)
    def counting_commit(self, *args, **kwargs):
        state["batches"] += 1
        if state["batches"] == nth:
            state["until"] = time.monotonic() + seconds
            log.error("injected store outage of %.0fs begins", seconds)
        return commit(self, *args, **kwargs)
    Processor.commit = counting_commit

    def wrap(name: str):
        original = getattr(LanceDBStore, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            if state["until"] is not None and time.monotonic() < state["until"]:
                raise TransientStoreError("injected store outage")
            return original(self, *args, **kwargs)
        setattr(LanceDBStore, name, wrapper)

    for name in ("get_states", "write_chunks", "upsert_chunks", "put_states", "delete_chunks_many"):
        wrap(name)


def install(spec: str) -> None:
    """``stage:n``: the n-th call of ``stage`` (1-based) raises once; ``store-outage:n:seconds``:
    see :func:`install_outage`."""
    import asyncio
    import functools

    if spec.startswith("store-outage:"):
        _, n, seconds = spec.split(":")
        install_outage(int(n), float(seconds))
        return
    stage, _, n = spec.partition(":")
    targets = _targets()
    if stage not in targets:
        raise SystemExit(f"{ENV}={spec!r}: unknown stage (one of {', '.join(STAGES)})")
    nth = int(n or 1)
    owner, attr, make, when = targets[stage]
    original = getattr(owner, attr)
    calls = [0]

    def should_raise(args, kwargs) -> bool:
        if when is not None and not when(args, kwargs):
            return False
        calls[0] += 1
        if calls[0] != nth:
            return False
        log.error("injected fault at %s (call %d)", stage, nth)
        return True

    def fault():
        return make() if make is not None else InjectedFault(f"injected fault at {stage} (call {nth})")

    if asyncio.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(*args, **kwargs):
            if should_raise(args, kwargs):
                raise fault()
            return await original(*args, **kwargs)
    else:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if should_raise(args, kwargs):
                raise fault()
            return original(*args, **kwargs)
    setattr(owner, attr, wrapper)


def main() -> int:
    spec = os.environ.get(ENV, "")
    if spec:
        install(spec)
    from app.cli import main as cli_main

    return cli_main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
