"""A per-partition limit on dead-lettering, so a systematic fault stops the worker instead of
draining the topic into the dead-letter topic.

Bad records are dead-lettered one by one and the stream goes on. A *systematic* fault - a broken
model build that makes every vector NaN, a store that refuses every object, a producer that
switched to an unknown schema - would turn every record into a dead letter, commit them all, and
leave the index empty with a dead-letter topic to replay. Like arroyo's ``DlqLimit``
(``max_invalid_ratio`` and ``max_consecutive_count``, per partition), :class:`DeadLetterLimiter`
watches each partition's records in offset order and reports a :class:`Breach` when

* more than ``max_consecutive`` records in a row were dead-lettered, or
* among the last ``window`` records (judged once at least ``min_records`` of them were seen),
  the share of dead letters is above ``max_share``.

The worker then stops consuming that partition: the batch that crossed the limit is neither
acked nor dead-lettered there (so nothing past the limit is committed), ``/readyz`` answers 503
with the reason, and the log says what to do. The counts live in memory: after a restart the
same records trip the limit again, until the cause is fixed or the limit is raised.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass(frozen=True)
class DeadLetterLimit:
    #: most dead letters in a row on one partition (0: no limit)
    max_consecutive: int = 100
    #: highest share of dead letters among a partition's last ``window`` records (>= 1: no limit)
    max_share: float = 0.5
    window: int = 1000
    #: the share is judged once this many records are in the window
    min_records: int = 100

    @property
    def enabled(self) -> bool:
        return self.max_consecutive > 0 or self.max_share < 1

    def describe(self) -> str:
        parts = []
        if self.max_consecutive > 0:
            parts.append(f"at most {self.max_consecutive} in a row")
        if self.max_share < 1:
            parts.append(f"at most {self.max_share:.0%} of the last {self.window} records")
        return ", ".join(parts) or "no limit"


@dataclass(frozen=True)
class Breach:
    tp: TP
    offset: int  # the record that crossed the limit
    rule: str    # "consecutive" | "share"
    detail: str
    reasons: dict = field(default_factory=dict)


class _PartitionState:
    __slots__ = ("window", "dead_in_window", "consecutive", "reasons")

    def __init__(self):
        self.window: deque[bool] = deque()
        self.dead_in_window = 0
        self.consecutive = 0
        self.reasons: Counter = Counter()


class DeadLetterLimiter:
    """Counts per partition; :meth:`observe` is called once per record, in offset order."""

    def __init__(self, limit: DeadLetterLimit | None = None):
        self.limit = limit or DeadLetterLimit()
        self._state: dict[TP, _PartitionState] = {}

    def observe(self, tp: TP, offset: int, dead_reason: str | None) -> Breach | None:
        lim = self.limit
        st = self._state.setdefault(tp, _PartitionState())
        dead = dead_reason is not None
        st.window.append(dead)
        st.dead_in_window += dead
        if len(st.window) > max(1, lim.window):
            st.dead_in_window -= st.window.popleft()
        if dead:
            st.consecutive += 1
            st.reasons[dead_reason] += 1
        else:
            st.consecutive = 0
            st.reasons.clear()
        if lim.max_consecutive > 0 and st.consecutive > lim.max_consecutive:
            return Breach(tp, offset, "consecutive",
                          f"{st.consecutive} dead letters in a row (limit {lim.max_consecutive})",
                          dict(st.reasons.most_common(3)))
        n = len(st.window)
        if lim.max_share < 1 and n >= max(1, lim.min_records) and st.dead_in_window / n > lim.max_share:
            return Breach(tp, offset, "share",
                          f"{st.dead_in_window} of the last {n} records dead-lettered "
                          f"(limit {lim.max_share:.0%} of {lim.window})", dict(st.reasons.most_common(3)))
        return None

    def check_batch(self, records, dead_reasons: dict[tuple[str, int, int], str]) -> dict[TP, Breach]:
        """Observe a batch (records in offset order per partition); the first breach of each partition."""
        out: dict[TP, Breach] = {}
        if not self.limit.enabled:
            return out
        for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
            tp = (r.topic, r.partition)
            if tp in out:
                continue
            b = self.observe(tp, r.offset, dead_reasons.get((r.topic, r.partition, r.offset)))
            if b is not None:
                out[tp] = b
        return out

    def forget(self, tps) -> None:
        for tp in tps:
            self._state.pop(tp, None)
