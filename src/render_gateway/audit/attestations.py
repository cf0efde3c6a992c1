"""Attestations: one row per finished request, the authoritative usage record of the cold path.

A row is the usage record plus the backend's signed claim split into its parts (payload,
signature, node key id, and the node's public key that verified it when the request settled),
so a verifier can check the claim without asking anyone. A claim that did not verify at settle
time is kept with the reason (``claim_error``) and no key: the row says what is not proven.

How a row is hashed into its batch's records root is the batch's version (its leaf's
``version``): version 1 hashed each row's canonical JSON (sorted keys), which costs a Python
dict and a JSON dump per row; version 2 (what is written now) hashes a binary encoding built
column-wise from the Arrow buffers (:func:`encode_row`, byte-exactly in docs/AUDIT.md), so
neither the writer nor a verifier makes a Python object per row. Version-1 batches still
verify and still get proofs.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from render_gateway.audit import batch_sha256
from render_gateway.audit.merkle import HASH_SIZE, leaf_hash, root

ROW_V1 = 1  # canonical JSON rows (batches written before 2026-12)
ROW_V2 = 2  # the binary row encoding below
ATTESTATION_VERSION = ROW_V2

SCHEMA = pa.schema(
    [
        ("usage_seq", pa.int64()),  # the record's place in the gateway's usage log
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("job_id", pa.string()),
        ("customer_id", pa.string()),
        ("plan", pa.string()),
        ("tier", pa.string()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("device_uuid", pa.string()),
        ("device_kind", pa.string()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("ended_at_us", pa.int64()),
        ("queue_time_us", pa.int64()),
        ("inference_time_us", pa.int64()),
        ("gpu_seconds", pa.float64()),
        ("metered", pa.bool_()),
        ("billable", pa.bool_()),
        ("unit_price", pa.float64()),
        ("currency", pa.string()),
        ("cost_nanos", pa.int64()),
        ("claim_payload", pa.string()),
        ("claim_signature", pa.string()),
        ("node_key_id", pa.string()),
        ("node_public_key", pa.string()),
        ("claim_error", pa.string()),  # why the claim did not verify at settle (else null)
    ]
)
# Version-1 batches have exactly these columns; version 2 adds the ones after them.
SCHEMA_V1 = SCHEMA
COLUMNS_V1 = tuple(SCHEMA_V1.names)
# An Ed25519-window claim's place in its window: canonical JSON {index, path, root, size}
# (claim_signature is then the window statement's); null for a direct claim.
SCHEMA = SCHEMA_V1.append(pa.field("claim_window", pa.string()))
COLUMNS = tuple(SCHEMA.names)
SCHEMAS = {ROW_V1: SCHEMA_V1, ROW_V2: SCHEMA}


def attestation(usage_seq: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """The row for one usage record, with the node key its claim was verified with when the
    request settled (never looked up now: a key learned later, or never, cannot change it)."""
    payload = signature = key_id = window = None
    public_key, claim_error = record.get("node_public_key"), record.get("claim_error")
    if text := record.get("usage_claim"):
        # Split as the backend sent it (a malformed one is kept whole, with its claim_error).
        try:
            envelope = orjson.loads(text)
            payload, signature = str(envelope["payload"]), str(envelope["signature"])
            key_id = str(envelope["key_id"])
            if (place := envelope.get("window")) is not None:
                window = orjson.dumps(place, option=orjson.OPT_SORT_KEYS).decode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            payload, signature, key_id, window = str(text), None, None, None
        if public_key is None and claim_error is None:  # a record from before settle checks
            claim_error = "the claim was not checked when the request settled"
    else:
        public_key = claim_error = None
    return {
        "usage_seq": usage_seq,
        "event_id": record["event_id"],
        "request_id": record["request_id"],
        "job_id": record.get("job_id"),
        "customer_id": record["customer_id"],
        "plan": record["plan"],
        "tier": record["tier"],
        "model": f"{record['modality']}/{record['family']}/{record['model']}",
        "backend": record.get("backend"),
        "device_uuid": record.get("device_uuid"),
        "device_kind": record.get("device_kind"),
        "status": record["status"],
        "error_code": record.get("error_code"),
        "ended_at_us": round(record["timestamp"] * 1_000_000),
        "queue_time_us": int(record["queue_time_us"]),
        "inference_time_us": int(record["inference_time_us"]),
        "gpu_seconds": float(record["gpu_seconds"]),
        "metered": bool(record["metered"]),
        "billable": bool(record["billable"]),
        "unit_price": float(record["unit_price"]),
        "currency": record["currency"],
        "cost_nanos": int(record["cost_nanos"]),
        "claim_payload": payload,
        "claim_signature": signature,
        "node_key_id": key_id,
        "node_public_key": public_key,
        "claim_error": claim_error,
        "claim_window": window,
    }


def canonical(row: Mapping[str, Any], columns: Sequence[str] = COLUMNS_V1) -> bytes:
    """A row's canonical JSON, sorted keys, in ``columns`` only: the bytes a version-1 row is
    hashed as, and how a proof bundle shows a row of either version."""
    if len(row) != len(columns):  # only the table's columns are hashed (a row read back has
        row = {name: row[name] for name in columns}  # exactly these; anything else is cut)
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def row_leaf_hashes(rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Version-1 rows' leaf hashes (their canonical JSON)."""
    return [leaf_hash(canonical(row)) for row in rows]


def records_root(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """RFC 6962 root over version-1 rows in order: proves one row's place in its batch."""
    return root(row_leaf_hashes(rows))


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Rows (mappings with ``schema``'s columns) as one Arrow table."""
    return pa.Table.from_pydict(
        {name: [row[name] for row in rows] for name in schema.names}, schema
    )


def to_parquet(batch: pa.Table | Sequence[Mapping[str, Any]]) -> bytes:
    """A batch file: the table (or the rows, as version-2 columns), Parquet with zstd."""
    table = batch if isinstance(batch, pa.Table) else rows_table(batch)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue()


# A batch is small (≤ batch_records rows, in memory): read it on the calling thread. Arrow's
# pool threads left alive can abort a CLI process at exit after its work is done ("terminate
# called without an active exception", apache/arrow#34314), failing `audit prove` about one run
# in seven here.
SERIAL_READ: dict[str, Any] = {"use_threads": False, "pre_buffer": False}


def read_batch(data: bytes, version: int = ATTESTATION_VERSION) -> pa.Table:
    """A batch file as a table; ValueError if it is not a batch of ``version``'s schema."""
    schema = SCHEMAS.get(version)
    if schema is None:
        raise ValueError(f"unknown attestation version {version}")
    try:
        table = pq.read_table(io.BytesIO(data), **SERIAL_READ)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable Parquet file: {exc}") from exc
    if table.schema.remove_metadata() != schema:
        raise ValueError(f"the Parquet file does not have the version-{version} attestation schema")
    return table


def from_parquet(data: bytes, version: int = ATTESTATION_VERSION) -> list[dict[str, Any]]:
    """Rows of a batch file; raises ValueError if it is not a batch of ``version``'s schema."""
    rows: list[dict[str, Any]] = read_batch(data, version).to_pylist()
    return rows


# --- Version 2: the binary row encoding ----------------------------------------------------
#
# A row is ROW_V2_MAGIC, then every column of SCHEMA in order, each as a tag byte (0x00 null,
# 0x01 a value) and then: int64 and float64, 8 bytes little-endian (two's complement; the IEEE
# 754 binary64 bits as stored); bool, 1 byte (0x00 or 0x01); string, a uint32 little-endian
# byte length and the UTF-8 bytes. A null's value bytes are zeros (a string's length 0), so a
# null and an empty string differ in their tag, and every field's size is known from its tag
# and type alone: the encoding is prefix-free and one row has exactly one encoding. The leaf
# hash is RFC 6962's SHA-256(0x00 ‖ row bytes); the magic cannot begin a version-1 row ('{').

ROW_V2_MAGIC = b"RGA\x02"
_FIXED = {pa.int64(): ("<q", 8), pa.float64(): ("<d", 8), pa.bool_(): ("<?", 1)}
_NUMPY = {pa.int64(): "<i8", pa.float64(): "<f8", pa.bool_(): "u1"}  # the same, for numpy


def _check_encodable(schema: pa.Schema) -> None:
    for item in schema:
        if item.type != pa.string() and item.type not in _FIXED:
            raise TypeError(f"column {item.name} has type {item.type}, which v2 cannot encode")


_check_encodable(SCHEMA)


def encode_row(row: Mapping[str, Any], schema: pa.Schema = SCHEMA) -> bytes:
    """One row's version-2 bytes (the reference: ``row_leaf_bytes`` builds the same for a whole
    table from its Arrow buffers). ``row`` holds every column of ``schema``."""
    out = bytearray(ROW_V2_MAGIC)
    for item in schema:
        value = row[item.name]
        if item.type == pa.string():
            data = b"" if value is None else str(value).encode()
            out += b"\x00" if value is None else b"\x01"
            out += struct.pack("<I", len(data)) + data
        else:
            fmt, width = _FIXED[item.type]
            out += b"\x00" + bytes(width) if value is None else b"\x01" + struct.pack(fmt, value)
    return bytes(out)


def encode_json_row(row: Mapping[str, Any], schema: pa.Schema = SCHEMA) -> bytes:
    """:func:`encode_row` for a row parsed from JSON (a proof bundle's): ValueError unless it
    has exactly ``schema``'s columns, each of its type or null (an int64 an integer, a float64
    a float, a bool a bool, a string a string)."""
    if set(row) != set(schema.names):
        raise ValueError("the row does not have exactly the attestation columns")
    for item in schema:
        value = row[item.name]
        kind = str if item.type == pa.string() else float if item.type == pa.float64() else None
        ok = (
            value is None
            or (item.type == pa.int64() and type(value) is int and -(2**63) <= value < 2**63)
            or (item.type == pa.bool_() and type(value) is bool)
            or (kind is not None and type(value) is kind)
        )
        if not ok:
            raise ValueError(f"the row's {item.name} is not a {item.type} (or null)")
    return encode_row(row, schema)


def decode_row(data: bytes, schema: pa.Schema = SCHEMA) -> dict[str, Any]:
    """The row a version-2 encoding holds; ValueError unless ``data`` is exactly one row's
    encoding (so the row a verifier shows is the only one those hashed bytes can mean)."""
    if not data.startswith(ROW_V2_MAGIC):
        raise ValueError("not a version-2 attestation row (no RGA\\x02 prefix)")
    at, row = len(ROW_V2_MAGIC), dict[str, Any]()
    for item in schema:
        if at >= len(data):
            raise ValueError(f"the row ends before column {item.name}")
        tag = data[at]
        if tag not in (0, 1):
            raise ValueError(f"column {item.name}: tag {tag} is neither null (0) nor value (1)")
        at += 1
        if item.type == pa.string():
            if at + 4 > len(data):
                raise ValueError(f"column {item.name}: the row ends inside its length")
            (length,) = struct.unpack_from("<I", data, at)
            at += 4
            raw = data[at : at + length]
            if len(raw) != length:
                raise ValueError(f"column {item.name}: the row ends inside its text")
            at += length
            if tag == 0:
                if length:
                    raise ValueError(f"column {item.name}: a null with a length")
                row[item.name] = None
            else:
                row[item.name] = raw.decode()  # strict UTF-8: UnicodeDecodeError is a ValueError
        else:
            fmt, width = _FIXED[item.type]
            raw = data[at : at + width]
            if len(raw) != width:
                raise ValueError(f"column {item.name}: the row ends inside its value")
            at += width
            if tag == 0:
                if any(raw):
                    raise ValueError(f"column {item.name}: a null with value bytes")
                row[item.name] = None
            else:
                if item.type == pa.bool_() and raw[0] > 1:
                    raise ValueError(f"column {item.name}: a bool byte of {raw[0]}")
                (row[item.name],) = struct.unpack(fmt, raw)
    if at != len(data):
        raise ValueError(f"{len(data) - at} bytes after the row's last column")
    return row


def _row_pieces(table: pa.Table) -> list[np.ndarray | pa.Array]:
    """Every row's 0x00 ‖ version-2 bytes as pieces laid end to end, built column-wise: an
    (n, width) uint8 array for each run of fixed-width parts (numpy fills them), and each
    string column's own binary array between them."""
    _check_encodable(table.schema)
    n = table.num_rows
    pieces: list[np.ndarray | pa.Array] = []
    fixed: list[np.ndarray] = [np.tile(np.frombuffer(b"\x00" + ROW_V2_MAGIC, np.uint8), (n, 1))]

    def flush() -> None:
        if fixed:
            pieces.append(np.ascontiguousarray(np.concatenate(fixed, axis=1)))
            fixed.clear()

    for item, column in zip(table.schema, table.columns, strict=True):
        array = column.combine_chunks()
        tag = array.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8).reshape(n, 1)
        if item.type == pa.string():
            data = pc.fill_null(array, "").cast(pa.binary())
            lengths = np.diff(_offsets(data)).astype("<u4").view(np.uint8).reshape(n, 4)
            fixed += [tag, lengths]
            flush()
            pieces.append(data)
        else:
            zero = pa.scalar(False if item.type == pa.bool_() else 0, item.type)
            values = pc.fill_null(array, zero).to_numpy(zero_copy_only=False)
            dtype = np.dtype(_NUMPY[item.type])  # its width given: an empty batch has rows too
            raw = values.astype(dtype).view(np.uint8).reshape(n, dtype.itemsize)
            fixed += [tag, raw]
    flush()
    return pieces


def _offsets(array: pa.Array) -> np.ndarray:
    """A binary array's n + 1 offsets into its data buffer (absolute: a slice's start past 0)."""
    return np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)


def _data(array: pa.Array) -> memoryview:
    data = array.buffers()[2]
    return memoryview(data if data is not None else b"")


def row_leaf_bytes(table: pa.Table) -> pa.Array:
    """Every row's 0x00 ‖ version-2 bytes (what its leaf hash hashes), as one binary array:
    the row pieces joined row by row by Arrow, in C++."""
    arrays = [
        pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(piece.shape[1]), len(piece), [None, pa.py_buffer(piece)]
        ).cast(pa.binary())
        if isinstance(piece, np.ndarray)
        else piece
        for piece in _row_pieces(table)
    ]
    joined: pa.Array = pc.binary_join_element_wise(*arrays, b"")
    return joined


def _leaf_hash_bytes(table: pa.Table) -> bytes:
    """Every row's leaf hash of a version-2 batch, 32 bytes each, end to end. Natively, one
    call hashes each row straight from its pieces (batch_sha256.hash_rows: no joined copy of
    the rows is built); otherwise the joined rows are hashed one by one."""
    if not batch_sha256.NATIVE:
        rows = row_leaf_bytes(table)
        return batch_sha256.reference_hash_slices(_data(rows), _offsets(rows))
    pieces: list[tuple[memoryview, int | np.ndarray]] = [
        (piece.reshape(-1).data, piece.shape[1])
        if isinstance(piece, np.ndarray)
        else (_data(piece), _offsets(piece))
        for piece in _row_pieces(table)
    ]
    return batch_sha256.hash_rows(table.num_rows, pieces)


def table_leaf_hashes(table: pa.Table, version: int = ATTESTATION_VERSION) -> list[bytes]:
    """The leaf hash of every row of a batch of ``version``."""
    if version == ROW_V1:
        return row_leaf_hashes(table.to_pylist())
    hashes = _leaf_hash_bytes(table)
    return [hashes[at : at + HASH_SIZE] for at in range(0, len(hashes), HASH_SIZE)]


def table_records_root(table: pa.Table, version: int = ATTESTATION_VERSION) -> bytes:
    """The records root of a batch of ``version`` (its leaf's ``records_root``)."""
    if version == ROW_V1:
        return root(row_leaf_hashes(table.to_pylist()))
    return batch_sha256.tree_root(_leaf_hash_bytes(table))


def row_encoding(table: pa.Table, index: int, version: int = ATTESTATION_VERSION) -> bytes:
    """The bytes row ``index`` of a batch is hashed as (without the leaf prefix)."""
    if version == ROW_V1:
        return canonical(table.slice(index, 1).to_pylist()[0])
    encoded: bytes = row_leaf_bytes(table.slice(index, 1))[0].as_py()
    return encoded[1:]


# --- The write path: attestation columns from the usage stream's stored JSON ---------------

# What the batcher reads of each stored record (UsageRecord.to_dict() less the claim).
_RECORD_SCHEMA = pa.schema(
    [(name, pa.string()) for name in (
        "event_id", "request_id", "job_id", "customer_id", "plan", "tier", "modality", "family",
        "model", "backend", "device_uuid", "device_kind", "status", "error_code", "currency",
        "node_public_key", "claim_error",
    )]
    + [("timestamp", pa.float64()), ("queue_time_us", pa.int64()),
       ("inference_time_us", pa.int64()), ("gpu_seconds", pa.float64()),
       ("metered", pa.bool_()), ("billable", pa.bool_()), ("unit_price", pa.float64()),
       ("cost_nanos", pa.int64())]
)  # fmt: skip
_REQUIRED = ("event_id", "request_id", "customer_id", "plan", "tier", "modality", "family",
             "model", "status", "currency", "timestamp", "queue_time_us", "inference_time_us",
             "gpu_seconds", "metered", "billable", "unit_price", "cost_nanos")  # fmt: skip
_UNCHECKED = "the claim was not checked when the request settled"


def attestations_table(
    seqs: Sequence[int], records: Sequence[bytes], claims: Sequence[str | None]
) -> pa.Table:
    """The batch's table for usage records as the stream stores them (their JSON, as the
    gateway's own orjson wrote it, and the backend's claim text apart): the same rows as
    :func:`attestation` makes, built column-wise. The records are parsed in one pass by
    Arrow; the claims, which come from backends, by orjson one by one exactly as
    ``attestation`` does. Anything the column-wise path does not expect (a missing field, a
    value of another type) falls back to ``attestation`` per record, which decides."""
    try:
        parsed = pa_json.read_json(
            io.BytesIO(b"\n".join(records)),
            read_options=pa_json.ReadOptions(
                use_threads=False, block_size=max(1 << 20, 2 * sum(map(len, records)))
            ),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_RECORD_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError):
        parsed = None
    if (
        parsed is None
        or parsed.num_rows != len(records)
        or any(parsed.column(name).null_count for name in _REQUIRED)
    ):
        triples = zip(seqs, records, claims, strict=True)
        return rows_table([_fallback(seq, record, claim) for seq, record, claim in triples])
    n = len(records)
    payloads: list[str | None] = [None] * n
    signatures: list[str | None] = [None] * n
    key_ids: list[str | None] = [None] * n
    windows: list[str | None] = [None] * n
    has_claim = np.zeros(n, dtype=bool)
    for position, text in enumerate(claims):
        if not text:
            continue
        has_claim[position] = True
        try:
            envelope = orjson.loads(text)
            payloads[position] = str(envelope["payload"])
            signatures[position] = str(envelope["signature"])
            key_ids[position] = str(envelope["key_id"])
            if (place := envelope.get("window")) is not None:
                windows[position] = orjson.dumps(place, option=orjson.OPT_SORT_KEYS).decode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            payloads[position], signatures[position], key_ids[position] = str(text), None, None
            windows[position] = None
    claimed = pa.array(has_claim)
    public_key = parsed.column("node_public_key")
    settle_error = parsed.column("claim_error")
    unchecked = pc.and_(claimed, pc.and_(pc.is_null(public_key), pc.is_null(settle_error)))
    nothing = pa.nulls(n, pa.string())
    columns: dict[str, Any] = {
        "usage_seq": pa.array(seqs, pa.int64()),
        "model": pc.binary_join_element_wise(
            parsed.column("modality"), parsed.column("family"), parsed.column("model"), "/"
        ),
        "ended_at_us": pc.cast(
            pc.round(
                pc.multiply(parsed.column("timestamp"), 1_000_000.0), round_mode="half_to_even"
            ),
            pa.int64(),
        ),  # Python's round(): half to even, on the same float product
        "claim_payload": pa.array(payloads, pa.string()),
        "claim_signature": pa.array(signatures, pa.string()),
        "node_key_id": pa.array(key_ids, pa.string()),
        "node_public_key": pc.if_else(claimed, public_key, nothing),
        "claim_error": pc.if_else(
            claimed, pc.if_else(unchecked, pa.scalar(_UNCHECKED), settle_error), nothing
        ),
        "claim_window": pa.array(windows, pa.string()),
    }
    arrays = [columns[name] if name in columns else parsed.column(name) for name in COLUMNS]
    return pa.Table.from_arrays(
        [pc.cast(a, t) for a, t in zip(arrays, SCHEMA.types, strict=True)], schema=SCHEMA
    )


def _fallback(seq: int, record: bytes, claim: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(record)
    fields["usage_claim"] = claim
    return attestation(seq, fields)
