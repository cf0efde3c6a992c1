"""The append-only audit log: attestation batches in CAS, a leaf per batch, a signed checkpoint
after every append.

Order of writes for one batch: a signed note for each node key the batch's claims use that
the log has not recorded yet, the Parquet file into CAS, then the leaf (the commit point:
create-only at ``log/leaves/<index>``), then the checkpoint for the new size. A crash after the
batch but before the leaf leaves an unreferenced blob (harmless; the batch is made again); a
crash after the leaf but before its checkpoint is repaired on the next open by signing the
missing checkpoint. A checkpoint is signed only if the tree it covers extends the last signed
one, so a log whose stored leaves no longer match its checkpoints is refused, never re-signed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from render_gateway.audit.attestations import (
    ATTESTATION_VERSION,
    SCHEMA,
    rows_table,
    table_records_root,
    to_parquet,
)
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import trusted_verifiers
from render_gateway.audit.leaves import (
    CHECKPOINTS_PREFIX,
    LEAVES_PREFIX,
    BatchLeaf,
    checkpoint_key,
    index_of,
    leaf_key,
)
from render_gateway.audit.merkle import MerkleLog
from render_gateway.audit.node_keys import (
    NodeKey,
    note_key,
    recorded_node_keys,
    sign_node_key_note,
)
from render_gateway.audit.signed_note import Checkpoint, NoteSigner, open_note, sign_note
from render_gateway.stores.objects import ObjectStore


class AuditLogCorrupt(RuntimeError):
    """The stored log does not match its own signed checkpoints: appending would hide that."""


class AuditLog:
    def __init__(
        self,
        objects: ObjectStore,
        signer: NoteSigner,
        origin: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.objects, self.cas = objects, ContentStore(objects)
        self.signer, self.origin, self._clock = signer, origin, clock
        self.tree = MerkleLog()
        self.leaves: list[BatchLeaf] = []
        self.checkpoint: Checkpoint | None = None
        self.checkpoint_note: bytes | None = None
        self.node_keys: dict[str, NodeKey] = {}  # base64 public key → its signed note
        # Held while the log changes, so that readers on other threads (proof lookups) see a
        # checkpoint together with the tree it signs.
        self.lock = threading.Lock()
        self._node_key_notes = 0

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def last_usage_seq(self) -> int:
        """The last usage-log record the log holds (0 when empty): where batching resumes."""
        return self.leaves[-1].last_usage_seq if self.leaves else 0

    def open(self) -> None:
        """Load the stored leaves and the latest checkpoint; sign one if the last append's
        checkpoint is missing."""
        for expected, key in enumerate(self.objects.list(LEAVES_PREFIX)):
            leaf = BatchLeaf.decode(self.objects.get(key))
            if index_of(key, LEAVES_PREFIX) != expected or leaf.index != expected:
                raise AuditLogCorrupt(f"leaf {key} is out of place (expected index {expected})")
            self.leaves.append(leaf)
            self.tree.append(leaf.hash)
        verifiers = trusted_verifiers(self.objects, [self.signer.verifier()])
        recorded, problems = recorded_node_keys(self.objects, verifiers)
        if problems:
            where, what = problems[0]
            raise AuditLogCorrupt(f"{where} {what}")
        self.node_keys = {key.public_key: key for key in recorded}
        self._node_key_notes = len(recorded)
        checkpoints = self.objects.list(CHECKPOINTS_PREFIX)
        if checkpoints:
            note = self.objects.get(checkpoints[-1])
            text, _ = open_note(note, verifiers)
            latest = Checkpoint.parse(text)
            if latest.size > self.size or self.tree.root_at(latest.size) != latest.root_hash:
                raise AuditLogCorrupt(
                    f"the stored leaves do not extend the signed checkpoint of size {latest.size}"
                )
            self.checkpoint, self.checkpoint_note = latest, note
        if self.size and (self.checkpoint is None or self.checkpoint.size < self.size):
            self._sign_checkpoint()

    def append(self, batch: pa.Table | Sequence[Mapping[str, Any]]) -> BatchLeaf:
        """Store one batch of attestations (a table of SCHEMA, or rows, in usage-log order)
        and commit it to the log, as a version-2 batch."""
        table = batch if isinstance(batch, pa.Table) else rows_table(batch)
        if not table.num_rows:
            raise ValueError("an empty batch")
        if table.schema != SCHEMA:
            raise ValueError("the batch does not have the attestation schema")
        self._record_node_keys(table)
        # The rows' hashes (C, without the GIL) on a second thread while this one writes the
        # Parquet (Arrow, without the GIL) and puts it: the batch's two costliest pieces, each
        # ~1.6-1.8 µs a record, need each other for nothing until the leaf is made.
        with ThreadPoolExecutor(1, thread_name_prefix="audit-root") as hashing:
            records_root = hashing.submit(table_records_root, table)
            digest = self.cas.put(to_parquet(table))
            root_hex = records_root.result().hex()
        previous = self.leaves[-1].timestamp_us if self.leaves else 0
        ended = pc.min_max(table.column("ended_at_us"))
        seqs = table.column("usage_seq")
        leaf = BatchLeaf(
            index=self.size,
            batch_blake3=digest,
            records_root=root_hex,
            count=table.num_rows,
            # Python's left-to-right sum, as version-1 leaves were summed.
            gpu_seconds=sum(table.column("gpu_seconds").to_pylist()),
            first_usage_seq=int(seqs[0].as_py()),
            last_usage_seq=int(seqs[-1].as_py()),
            window_start_us=int(ended["min"].as_py()),
            window_end_us=int(ended["max"].as_py()),
            timestamp_us=max(round(self._clock() * 1_000_000), previous + 1),
            version=ATTESTATION_VERSION,
        )
        self.objects.put_new(leaf_key(leaf.index), leaf.encode())
        with self.lock:
            self.leaves.append(leaf)
            self.tree.append(leaf.hash)
            self._sign_checkpoint()
        return leaf

    def _record_node_keys(self, table: pa.Table) -> None:
        """Sign a note for every node key the rows' claims were verified with that the log has
        not recorded yet: a verifier's trust-on-first-use anchors, written before the rows."""
        keys = table.column("node_public_key")
        if keys.null_count == len(keys):
            return
        # Rows whose key the log has not recorded, in row order; the loop takes each key's first.
        known = pc.is_in(keys, value_set=pa.array(list(self.node_keys), pa.string()))
        fresh = pc.and_(pc.invert(known), pc.is_valid(keys))
        wanted = table.filter(fresh).select(["node_public_key", "node_key_id", "backend"])
        for row in wanted.to_pylist():
            public_key = row["node_public_key"]
            if public_key in self.node_keys:
                continue
            key = NodeKey(
                row["node_key_id"], public_key, row["backend"] or "-",
                round(self._clock() * 1_000_000),
            )  # fmt: skip
            self.objects.put_new(
                note_key(self._node_key_notes), sign_node_key_note(key, self.signer)
            )
            self._node_key_notes += 1
            self.node_keys[public_key] = key

    def _sign_checkpoint(self) -> None:
        last = self.checkpoint  # never sign a tree that does not extend the last one
        if last is not None and self.tree.root_at(last.size) != last.root_hash:
            raise AuditLogCorrupt("the log no longer extends its last signed checkpoint")
        checkpoint = Checkpoint(self.origin, self.size, self.tree.root())
        note = sign_note(checkpoint.to_text(), [self.signer])
        self.objects.put_new(checkpoint_key(checkpoint.size), note)
        self.checkpoint, self.checkpoint_note = checkpoint, note


def open_audit_log(objects: ObjectStore, signer: NoteSigner, origin: str) -> AuditLog:
    """The log as stored, opened (and its missing checkpoint signed): what every writer uses."""
    audit_log = AuditLog(objects, signer, origin)
    audit_log.open()
    return audit_log
