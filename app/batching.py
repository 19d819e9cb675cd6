"""Micro-batch planning: what to write for each document of a batch, given what the store holds.

Pure logic, no I/O. The events of one document arrive in offset order (one partition).
:func:`fold` applies them one by one to a *virtual* copy of the stored
:class:`DocState`, with the rules below, and returns a :class:`DocPlan`: the single
write (upsert or delete) that brings the store to the state the events lead to, and
what happened to each event. Folding - rather than keeping only the "newest" event -
makes the result independent of where batch boundaries fall (they differ at every
redelivery), e.g. ``[tombstone, stale upsert]`` still deletes.

   ========================  =====================================================
   state so far vs event     action
   ========================  =====================================================
   UPSERT, newer version     ``upsert``
   UPSERT, same version,     ``duplicate`` (a redelivery: nothing to do)
   same content
   UPSERT, same version,     ``conflict`` (dead-lettered: versions must change
   other content             when content does)
   UPSERT, older version     ``stale`` (dropped: never overwrites newer state)
   DELETE v >= current       ``delete`` (or ``duplicate`` if already deleted at v)
   DELETE, older version     ``stale``
   tombstone (no version)    ``delete`` of whatever is there, keeping its version
                             (``noop`` if nothing is there)
   ========================  =====================================================

Versions decide everything they can. Tombstones carry no version, so only the position of the
record tells a redelivered tombstone from a new one: a tombstone at or below the offset the stored
state was last written from (same topic, partition **and topic incarnation**) was already applied
and is skipped (``already_applied``). The incarnation (the Kafka topic id, or cluster id + topic)
matters because a recreated or mirrored topic numbers its records from 0 again: without it a new
tombstone at a low offset would be skipped. Versioned events are never skipped by offset - a
redelivered one is a ``duplicate`` or ``stale`` by the rules above.

    >>> from app.events import ChangeEvent, Op
    >>> up = lambda v: ChangeEvent("d", Op.UPSERT, v, 0, text=f"text {v}")
    >>> tomb = ChangeEvent("d", Op.DELETE, None, 0)
    >>> p = fold("d", [(0, up(1)), (1, up(3)), (2, up(2))], None, lambda e: e.text)
    >>> p.action.value, p.version, [a.value for _, a in p.outcomes]
    ('upsert', 3, ['superseded', 'upsert', 'stale'])
    >>> p = fold("d", [(0, up(4)), (1, tomb), (2, up(2))], None, lambda e: e.text)
    >>> p.action.value, p.version
    ('delete', 4)
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from app.events import ChangeEvent, Op
from app.store.base import DocState


class Action(str, enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"
    NOOP = "noop"  # tombstone for a document that is not there
    SUPERSEDED = "superseded"  # applied in the fold, then overridden by a later event of the batch
    ALREADY_APPLIED = "already_applied"  # record at/below the offset the stored state came from


@dataclass
class DocPlan:
    doc_id: str
    #: UPSERT, DELETE, or NOOP when nothing is to be written
    action: Action
    #: position of the event whose content is written (UPSERT) or that deleted (DELETE)
    pos: int = -1
    event: ChangeEvent | None = None
    version: int = 0
    #: the new content equals what the store holds: reuse the stored vectors
    reuse_vectors: bool = False
    content_hash: str = ""
    #: (position, action) of every event of the document in the batch
    outcomes: list[tuple[int, Action]] = field(default_factory=list)
    #: position of the document's last record in the batch (its offset goes into the state)
    last_pos: int = -1


def _step(ev: ChangeEvent, cur: DocState | None, h: str | None) -> tuple[Action, int]:
    """(action, version to record) of one event against the state so far."""
    if ev.version is None:  # tombstone
        if cur is None:
            return Action.NOOP, 0
        return (Action.DUPLICATE, cur.version) if cur.deleted else (Action.DELETE, cur.version)
    if ev.op is Op.DELETE:
        if cur is None:
            return Action.DELETE, ev.version
        if ev.version < cur.version:
            return Action.STALE, 0
        if cur.deleted and ev.version == cur.version:
            return Action.DUPLICATE, cur.version
        return Action.DELETE, ev.version
    if cur is None:
        return Action.UPSERT, ev.version
    if ev.version < cur.version:
        return Action.STALE, 0
    if ev.version == cur.version:
        if cur.deleted:
            return Action.STALE, 0  # a delete at this version came later
        return (Action.DUPLICATE, 0) if cur.content_hash == h else (Action.CONFLICT, 0)
    return Action.UPSERT, ev.version


def fold(doc_id: str, events: Sequence[tuple[int, ChangeEvent]], stored: DocState | None,
         content_hash: Callable[[ChangeEvent], str]) -> DocPlan:
    """Apply one document's events (in offset order) to its stored state."""
    cur = stored
    plan = DocPlan(doc_id, Action.NOOP)
    applied: int | None = None  # index into plan.outcomes of the event currently deciding the state
    for pos, ev in events:
        h = content_hash(ev) if ev.op is Op.UPSERT and ev.version is not None else None
        action, version = _step(ev, cur, h)
        plan.outcomes.append((pos, action))
        plan.last_pos = max(plan.last_pos, pos)
        if action not in (Action.UPSERT, Action.DELETE):
            continue
        if applied is not None:
            plan.outcomes[applied] = (plan.outcomes[applied][0], Action.SUPERSEDED)
        applied = len(plan.outcomes) - 1
        plan.action, plan.pos, plan.event, plan.version = action, pos, ev, version
        if action is Action.UPSERT:
            plan.content_hash = h or ""
            cur = DocState(doc_id, version, plan.content_hash, "", -1, False, 0, 0)
        else:
            plan.content_hash = ""
            cur = DocState(doc_id, version, "", "", 0, True, 0, 0)
    if plan.action is Action.UPSERT:
        # reuse is judged against what the store really holds, not the virtual state
        plan.reuse_vectors = (stored is not None and not stored.deleted and stored.chunk_count > 0
                              and stored.content_hash == plan.content_hash)
    return plan


def already_applied(stored: DocState | None, topic: str, partition: int, offset: int,
                    incarnation: str = "") -> bool:
    """True when the stored state was written from this record or a later one of its partition,
    in the same incarnation of the topic. A state or a record whose incarnation is unknown ("":
    written before incarnations were recorded, or a broker that names none) compares as before,
    by topic, partition and offset only."""
    if stored is None or stored.source_offset < 0 or stored.source_topic != topic \
            or stored.source_partition != partition:
        return False
    have = getattr(stored, "source_incarnation", "")
    if have and incarnation and have != incarnation:
        return False  # the topic was recreated or mirrored: its offsets started again
    return offset <= stored.source_offset


def with_source(state: DocState, topic: str, partition: int, offset: int, incarnation: str = "") -> DocState:
    return replace(state, source_topic=topic, source_partition=partition, source_offset=offset,
                   source_incarnation=incarnation)
