"""Faust wiring details that the end-to-end worker tests cannot see directly."""
from __future__ import annotations

import asyncio
import dataclasses

from app.agents import create_app
from app.config import Settings


class _NoProcessor:
    """create_app only stores the processor; these tests never run a batch."""


def test_worker_consumer_uses_the_configured_fetch_wait(broker, settings):
    """Faust hard-codes fetch_max_wait_ms=1500 for its worker consumer; ours comes from the
    setting and reaches aiokafka's Fetcher (the attribute it reads is private: this pins it)."""
    app = create_app(dataclasses.replace(settings, fetch_max_wait_ms=37), _NoProcessor())

    async def started_fetch_wait():
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        assert consumer._fetch_max_wait_ms == 37
        await consumer.start()
        try:
            return consumer._fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(started_fetch_wait()) == 37


def test_default_fetch_wait_is_well_below_fausts():
    assert Settings.load(env={}).fetch_max_wait_ms < 1500
