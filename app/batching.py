"""Micro-batch planning: which events of a batch to apply, given what the store holds.

Two pure steps, no I/O:

1. :func:`coalesce` keeps, per document, the event that decides its final state
   within the batch (records of one document arrive in offset order, one partition).
   Older or superseded events are reported, never silently lost.
2. :func:`plan` compares each surviving event with the stored :class:`DocState`:

   ========================  =====================================================
   stored state vs event     action
   ========================  =====================================================
   UPSERT, newer version     ``upsert`` (``reuse_vectors`` when content is unchanged)
   UPSERT, same version,     ``duplicate`` (a redelivery: nothing to do)
   same content
   UPSERT, same version,     ``conflict`` (dead-lettered: versions must change
   other content             when content does)
   UPSERT, older version     ``stale`` (dropped: never overwrites newer state)
   DELETE v >= stored        ``delete`` (or ``duplicate`` if already deleted at v)
   DELETE, older version     ``stale``
   tombstone (no version)    ``delete`` of whatever is stored, keeping its version
                             (or the highest version seen before it in the batch)
   ========================  =====================================================

    >>> from app.events import ChangeEvent, Op
    >>> e = lambda v, op=Op.UPSERT: ChangeEvent("d", op, v, 0, text="t" if op is Op.UPSERT else None)
    >>> winners, superseded = coalesce([(0, e(1)), (1, e(3)), (2, e(2))])
    >>> [w.event.version for w in winners.values()], sorted(superseded)
    ([3], [0, 2])
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Mapping

from app.events import ChangeEvent, Op
from app.store.base import DocState


class Action(str, enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"
    NOOP = "noop"  # tombstone for a document we never stored


@dataclass
class Winner:
    """The event that decides one document's state in this batch."""

    pos: int  # position of the record in the batch
    event: ChangeEvent
    #: for tombstones: the highest version seen before it in the batch (or None)
    floor_version: int | None = None


def coalesce(items: Iterable[tuple[int, ChangeEvent]]) -> tuple[dict[str, Winner], list[int]]:
    """Newest event per document. Returns (winners by doc_id, positions superseded in-batch)."""
    winners: dict[str, Winner] = {}
    superseded: list[int] = []
    for pos, ev in items:
        cur = winners.get(ev.doc_id)
        if cur is None:
            winners[ev.doc_id] = Winner(pos, ev)
            continue
        cur_v = cur.event.version if cur.event.version is not None else cur.floor_version
        if ev.version is None:  # tombstone: deletes what came before it
            superseded.append(cur.pos)
            winners[ev.doc_id] = Winner(pos, ev, floor_version=cur_v)
        elif cur_v is None or ev.version > cur_v or (ev.version == cur_v and ev.op is Op.DELETE
                                                     and cur.event.op is Op.UPSERT):
            superseded.append(cur.pos)
            winners[ev.doc_id] = Winner(pos, ev)
        else:
            superseded.append(pos)  # older (or equal) than what the batch already has
    return winners, superseded


@dataclass
class Decision:
    action: Action
    winner: Winner
    state: DocState | None
    #: version to record in the new state
    version: int = 0
    reuse_vectors: bool = False


def decide(w: Winner, state: DocState | None, content_hash: str | None) -> Decision:
    """What to do with one winning event. ``content_hash`` is the new content's hash (UPSERT)."""
    ev = w.event
    if ev.version is None:  # tombstone
        if state is None and w.floor_version is not None:
            # the batch held a versioned event before the tombstone: remember the delete at
            # that version so a redelivery of the older upsert cannot bring the doc back
            return Decision(Action.DELETE, w, state, version=w.floor_version)
        if state is None or state.deleted:
            return Decision(Action.NOOP if state is None else Action.DUPLICATE, w, state)
        return Decision(Action.DELETE, w, state, version=max(state.version, w.floor_version or 0))
    if ev.op is Op.DELETE:
        if state is None:
            return Decision(Action.DELETE, w, state, version=ev.version)
        if ev.version < state.version:
            return Decision(Action.STALE, w, state)
        if state.deleted and ev.version == state.version:
            return Decision(Action.DUPLICATE, w, state)
        return Decision(Action.DELETE, w, state, version=ev.version)
    # UPSERT
    if state is None:
        return Decision(Action.UPSERT, w, state, version=ev.version)
    if ev.version < state.version:
        return Decision(Action.STALE, w, state)
    if ev.version == state.version:
        if state.deleted:
            return Decision(Action.STALE, w, state)  # a delete at this version came later
        if state.content_hash == content_hash:
            return Decision(Action.DUPLICATE, w, state)
        return Decision(Action.CONFLICT, w, state)
    reuse = (not state.deleted and state.content_hash == content_hash and state.chunk_count > 0)
    return Decision(Action.UPSERT, w, state, version=ev.version, reuse_vectors=reuse)


def plan(winners: Mapping[str, Winner], states: Mapping[str, DocState],
         content_hashes: Mapping[str, str]) -> list[Decision]:
    return [decide(w, states.get(doc_id), content_hashes.get(doc_id)) for doc_id, w in winners.items()]
