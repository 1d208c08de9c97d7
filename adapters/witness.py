"""Witnessing the gateway's audit log: keep every checkpoint seen, prove they are consistent.

Rules kept here:

* A checkpoint counts only after its signature verified with a ``sign`` key of the
  directory's gateway entry, under the log's origin (C2SP: the key name is the origin).
* The origin is pinned: from the ``origin`` argument when configured, else on first sight in
  ``adapter.db`` (trust on first use), and a checkpoint for another origin is refused after.
* Every verified checkpoint is kept. Each new one is compared with the largest kept: a head
  (``GET /v1/audit/checkpoint``) smaller than a tree seen before, the same size with another
  root, or a consistency proof that does not verify is an **inconsistency**: the gateway showed
  two histories. That raises ``WitnessAlarm``; the engine counts it, logs it and turns
  ``/healthz`` red. A checkpoint from an older receipt is fine if it is consistent with the
  largest one (receipts are returned again for a resubmitted envelope).
* **Exchange** (``WitnessExchange``, docs/adr/0010): every ``[witness] exchange_s`` the adapter
  publishes a *witness statement* — the largest checkpoint it verified, with its partner id
  and the time, signed with its ``sign`` key under the ``WITNESS_STATEMENT`` label — to a file
  named in config, and reads each configured peer's (a shared path or an HTTP URL: never
  through the gateway, so the gateway can neither drop nor delay it). A peer's statement
  counts only if its signature verifies with a ``sign`` key the directory lists for that peer
  and the gateway checkpoint inside verifies; the checkpoint is then ``observe``d like our own:
  the same size with another root, or a consistency proof that does not verify, is the
  gateway showing two partners two logs — ``WitnessAlarm`` for each partner that reads the
  other's statement, so both see it within one interval.
* **Heads bound acceptance times.** A head of ``size`` entries seen at ``t`` is the gateway's
  word that no leaf at index ``size`` or later existed at ``t``; the last such sighting of
  each kept checkpoint is kept (``head_seen_at``), and a delivery whose audited acceptance
  lies before a head that did not hold its leaf is refused (``adapters.acceptance``).
* Consistency proofs come from the gateway, which is the party being checked; a proof it cannot
  give (an error answer) is not an inconsistency but is retried at the next observation.
* **Inclusion pending.** An acceptance receipt without its audit entry (made before receipts
  carried one) is checked against the leaf the gateway serves at ``leaf_index``. When that
  fetch fails (unreachable, a refusal) nothing wrong has been shown: the row is ``accepted``
  and its message id is kept in ``PendingInclusions`` to be checked again with bounded
  retries. Only an answer that is wrong (a proof that does not lead to the signed root, a
  malformed answer) makes a row ``disputed``. The pending set is one JSON document in
  ``adapter.db``'s settings, written in one statement, so it survives a restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import aiohttp
import msgspec

from adapters.errors import AdapterError
from adapters.outbox import AdapterStore, CheckpointRow
from gateway.protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    parse_checkpoint,
    verify_checkpoint,
)
from gateway.protocol.labels import WITNESS_STATEMENT, framed
from gateway.protocol.merkle import ConsistencyProof, MerkleError, verify_consistency
from keys import Directory, DirectoryError, Ed25519KeyPair, KeysError, KeyState, KeyUse
from keys.keypair import verify_ed25519

ORIGIN_SETTING = "checkpoint_origin"
INCLUSION_SETTING = "inclusion_pending"

ConsistencyFetch = Callable[[int, int], Awaitable[Sequence[bytes]]]


def signed_note(checkpoint: Checkpoint) -> str:
    """The checkpoint as the signed note it came in (text and signature lines), so what is
    kept is evidence a third party can verify, and can be handed to witness peers."""
    lines = "".join(
        f"\u2014 {s.key_name} {base64.b64encode(s.key_id + s.signature).decode()}\n"
        for s in checkpoint.signatures
    )
    return f"{checkpoint.text}\n{lines}"


class CheckpointInvalidError(AdapterError):
    """A checkpoint does not verify (signature, key, origin, form)."""


class WitnessAlarm(AdapterError):
    """The gateway showed checkpoints that cannot both be true."""


class Witness:
    """Checks and keeps checkpoints in ``store``."""

    def __init__(self, store: AdapterStore, origin: str | None = None) -> None:
        self._store = store
        self._origin = origin

    def verify(self, note: str, directory: Directory, now: int) -> Checkpoint:
        """Verify ``note``'s gateway signature and origin; ``CheckpointInvalidError``."""
        try:
            origin = self._origin or self._store.setting(ORIGIN_SETTING)
            if origin is None:
                origin = parse_checkpoint(note).origin
            last: CheckpointError | None = None
            for key in directory.gateway.keys:
                if key.use is not KeyUse.SIGN:
                    continue
                try:
                    checkpoint = verify_checkpoint(note, origin, origin, key.public)
                except CheckpointError as exc:
                    last = exc
                    continue
                if self._store.setting(ORIGIN_SETTING) is None:
                    self._store.set_setting(ORIGIN_SETTING, origin)
                return checkpoint
        except CheckpointError as exc:
            raise CheckpointInvalidError(f"{exc.reason.value}: {exc}") from None
        detail = f"{last.reason.value}: {last}" if last else "the gateway has no sign key"
        raise CheckpointInvalidError(detail)

    async def observe(
        self, checkpoint: Checkpoint, prove: ConsistencyFetch, now: int, *, head: bool
    ) -> None:
        """Keep ``checkpoint`` after checking it against the largest one kept.

        ``head``: it is the gateway's current head, which must never be smaller than a tree
        seen before. Raises ``WitnessAlarm`` on an inconsistency (the checkpoint is kept as
        evidence), ``AdapterError`` if a proof could not be fetched.
        """
        last = self._store.last_checkpoint()
        size, root = checkpoint.size, checkpoint.root_hash
        try:
            await self._compare(last, size, root, prove, head=head)
        except WitnessAlarm:
            # Kept as the evidence of the alarm.
            self._store.keep_checkpoint(size, root, signed_note(checkpoint), now, head=head)
            raise
        # Not kept when a proof could not be fetched (that raised above): it is observed again.
        self._store.keep_checkpoint(size, root, signed_note(checkpoint), now, head=head)

    def last_head_without(self, leaf_index: int) -> int | None:
        """The latest time (our clock) the gateway showed us as its head a tree that did not
        yet hold leaf ``leaf_index`` (one of at most ``leaf_index`` entries); ``None`` if it
        never did. Only heads count: a checkpoint inside a receipt or a peer's statement may
        be old when we first see it, and says nothing of when the leaf was added."""
        return self._store.last_head_without(leaf_index)

    @staticmethod
    async def _compare(
        last: CheckpointRow | None, size: int, root: bytes, prove: ConsistencyFetch, *, head: bool
    ) -> None:
        if last is None or (last.size == size and last.root == root):
            return
        if last.size == size:
            raise WitnessAlarm(f"two different roots for tree size {size}")
        if head and size < last.size:
            raise WitnessAlarm(f"the log head shrank from {last.size} to {size} entries")
        old_size, old_root, new_size, new_root = (
            (last.size, last.root, size, root)
            if size > last.size
            else (size, root, last.size, last.root)
        )
        if old_size == 0:
            return
        hashes = await prove(old_size, new_size)
        try:
            verify_consistency(
                ConsistencyProof(old_size=old_size, new_size=new_size, hashes=tuple(hashes)),
                old_root,
                new_root,
            )
        except MerkleError as exc:
            raise WitnessAlarm(
                f"tree {new_size} is not consistent with tree {old_size}: {exc}"
            ) from None


@dataclass(frozen=True)
class PendingInclusion:
    """An accepted message whose receipt's inclusion proof is still to be checked.

    ``attempts`` counts failed checks; ``abandoned`` is set when the retries ran out (an alarm
    was raised then); the entry stays as the record of it.
    """

    message_id: str
    attempts: int
    next_check_at: int
    detail: str
    abandoned: bool = False


class PendingInclusions:
    """The "accepted, inclusion pending" set in ``store`` (see the module rules)."""

    def __init__(self, store: AdapterStore) -> None:
        self._store = store

    def _load(self) -> dict[str, PendingInclusion]:
        raw = self._store.setting(INCLUSION_SETTING)
        items = json.loads(raw) if raw else []
        return {item["message_id"]: PendingInclusion(**item) for item in items}

    def _save(self, items: dict[str, PendingInclusion]) -> None:
        self._store.set_setting(
            INCLUSION_SETTING, json.dumps([asdict(i) for i in items.values()], sort_keys=True)
        )

    def all(self) -> list[PendingInclusion]:
        return list(self._load().values())

    def due(self, now: int) -> list[PendingInclusion]:
        """Entries not abandoned whose next check is due at ``now``."""
        return [i for i in self._load().values() if not i.abandoned and i.next_check_at <= now]

    def put(self, item: PendingInclusion) -> None:
        items = self._load()
        items[item.message_id] = item
        self._save(items)

    def remove(self, message_id: str) -> None:
        items = self._load()
        if items.pop(message_id, None) is not None:
            self._save(items)


# Domain separation for witness statements (house rule 6): a partner's signature over its view
# of the log can never be taken for any other object it signs (receipts, rejections, envelopes).
# The label is one of ``labels.ALL_LABELS`` (protocol section 3 and 10.5).
PEERS_SETTING = "witness_peers"
MAX_STATEMENT_BYTES: Final = 64 * 1024
FETCH_TIMEOUT_S: Final = 5.0


class WitnessStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a partner says it saw: the largest gateway checkpoint it verified, and when."""

    partner: str
    checkpoint: str
    published_at: int
    version: int = 1


class SignedStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The published file (JSON): the statement's msgpack bytes and the Ed25519 signature over
    ``framed(WITNESS_STATEMENT, statement)``, both base64."""

    statement: str
    signature: str


class StatementInvalidError(AdapterError):
    """A peer's witness statement does not decode or verify."""


def sign_statement(statement: WitnessStatement, key: Ed25519KeyPair) -> bytes:
    data = msgspec.msgpack.encode(statement)
    signature = key.sign(framed(WITNESS_STATEMENT, data))
    return msgspec.json.encode(
        SignedStatement(base64.b64encode(data).decode(), base64.b64encode(signature).decode())
    )


def verify_statement(raw: bytes, peer: str, directory: Directory, now: int) -> WitnessStatement:
    """Decode and verify a statement of ``peer``: its signature with one of the ``sign`` keys
    the directory lists for ``peer`` (not revoked at the reader's ``now``), and that it is
    ``peer``'s. Raises ``StatementInvalidError``."""
    if len(raw) > MAX_STATEMENT_BYTES:
        raise StatementInvalidError("statement too large")
    try:
        signed = msgspec.json.decode(raw, type=SignedStatement)
        data = base64.b64decode(signed.statement, validate=True)
        signature = base64.b64decode(signed.signature, validate=True)
        statement = msgspec.msgpack.decode(data, type=WitnessStatement)
        partner = directory.partner(peer)
    except (msgspec.DecodeError, ValueError, DirectoryError) as exc:
        raise StatementInvalidError(f"statement does not decode: {exc}") from None
    if statement.partner != peer:
        raise StatementInvalidError(f"statement of {statement.partner!r}, not of {peer!r}")
    message = framed(WITNESS_STATEMENT, data)
    for key in partner.keys:
        # Judged at the reader's ``now``, not at the statement's own ``published_at``: a thief
        # of a since-revoked key could otherwise date a statement back to before the revocation.
        if key.use is not KeyUse.SIGN or key.state(now) is KeyState.REVOKED:
            continue
        try:
            verify_ed25519(key.public, message, signature)
        except KeysError:
            continue
        return statement
    raise StatementInvalidError(f"signature does not verify with a sign key of {peer}")


@dataclass(frozen=True)
class PeerView:
    """What we last learnt from one peer: its latest checkpoint and how it compares."""

    peer: str
    # consistent | pending (no proof yet) | inconsistent | invalid | unavailable
    status: str
    detail: str
    read_at: int
    size: int | None = None
    root: str | None = None
    published_at: int | None = None


StatementFetch = Callable[[], Awaitable[bytes | None]]


def file_fetch(path: Path) -> StatementFetch:
    async def fetch() -> bytes | None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return data[: MAX_STATEMENT_BYTES + 1]

    return fetch


def url_fetch(url: str) -> StatementFetch:
    async def fetch() -> bytes | None:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            return await resp.content.read(MAX_STATEMENT_BYTES + 1)

    return fetch


class WitnessExchange:
    """Publishes our statement and checks the peers' (see the module rules)."""

    def __init__(
        self,
        store: AdapterStore,
        witness: Witness,
        partner_id: str,
        publish: Path,
        peers: Sequence[tuple[str, StatementFetch]],
    ) -> None:
        self._store = store
        self._witness = witness
        self._partner_id = partner_id
        self._publish = publish
        self._peers = peers

    def publish(self, key: Ed25519KeyPair, now: int) -> bool:
        """Write our statement (atomically: a peer never reads half a file). False when we
        have seen no checkpoint yet."""
        last = self._store.last_checkpoint()
        if last is None:
            return False
        data = sign_statement(WitnessStatement(self._partner_id, last.note, now), key)
        self._publish.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._publish.with_name(self._publish.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self._publish)
        return True

    async def check_peers(
        self, directory: Directory, prove: ConsistencyFetch, now: int
    ) -> list[PeerView]:
        """Read and check every peer's statement; keep the views in ``adapter.db``. A split
        view comes back as status ``inconsistent`` (the caller raises the alarm)."""
        views = [
            await self._check(peer, fetch, directory, prove, now) for peer, fetch in self._peers
        ]
        known = peer_views(self._store)
        for view in views:
            old = known.get(view.peer)
            if view.status in ("unavailable", "invalid") and old is not None:
                # Keep what we last verified; say why it was not refreshed.
                known[view.peer] = PeerView(
                    view.peer,
                    view.status,
                    view.detail,
                    view.read_at,
                    old.size,
                    old.root,
                    old.published_at,
                )
            else:
                known[view.peer] = view
        self._store.set_setting(
            PEERS_SETTING, json.dumps([asdict(v) for v in known.values()], sort_keys=True)
        )
        return views

    async def _check(
        self,
        peer: str,
        fetch: StatementFetch,
        directory: Directory,
        prove: ConsistencyFetch,
        now: int,
    ) -> PeerView:
        try:
            raw = await fetch()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            return PeerView(peer, "unavailable", f"{type(exc).__name__}: {exc}", now)
        if raw is None:
            return PeerView(peer, "unavailable", "no statement published yet", now)
        try:
            statement = verify_statement(raw, peer, directory, now)
            checkpoint = self._witness.verify(statement.checkpoint, directory, now)
        except (StatementInvalidError, CheckpointInvalidError) as exc:
            return PeerView(peer, "invalid", str(exc), now)
        seen = (checkpoint.size, checkpoint.root_hash.hex(), statement.published_at)
        try:
            await self._witness.observe(checkpoint, prove, now, head=False)
        except WitnessAlarm as exc:
            detail = f"{peer} saw a log inconsistent with ours: {exc}"
            return PeerView(peer, "inconsistent", detail, now, *seen)
        except AdapterError as exc:
            return PeerView(peer, "pending", f"no consistency proof yet: {exc}", now, *seen)
        return PeerView(peer, "consistent", "", now, *seen)


def peer_views(store: AdapterStore) -> dict[str, PeerView]:
    """The last view of each peer, as kept by ``WitnessExchange.check_peers``."""
    raw = store.setting(PEERS_SETTING)
    return {item["peer"]: PeerView(**item) for item in (json.loads(raw) if raw else [])}
