"""Version-2 attestation rows: the binary encoding built column-wise from Arrow buffers, checked
against the per-row reference encoder, and the write path's column-wise table against the
per-record ``attestation``; version-1 batches (canonical JSON rows) still verify and prove."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render_gateway.audit import batch_sha256, merkle
from render_gateway.audit.attestations import (
    ROW_V2_MAGIC,
    SCHEMA,
    SCHEMA_V1,
    _fallback,
    attestations_table,
    decode_row,
    encode_json_row,
    encode_row,
    read_batch,
    row_leaf_bytes,
    rows_table,
    table_leaf_hashes,
    table_records_root,
    to_parquet,
)
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.audit.leaves import BatchLeaf, leaf_key
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.merkle import leaf_hash
from render_gateway.audit.proofs import BundleError, bundle_from_store, verify_bundle
from render_gateway.audit.verify import verify_log
from render_gateway.stores.objects import open_object_store

from support.audit_fixtures import append_v1, signed_record, window_signed_records

ORIGIN = "render-gateway/test"
PROOF_JS = Path(__file__).resolve().parents[2] / "src/render_gateway/console/static/proof.js"

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_VALUES: dict[pa.DataType, st.SearchStrategy[Any]] = {
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.float64(): st.floats(allow_nan=False),
    pa.bool_(): st.booleans(),
    pa.string(): _TEXT,
}


def _row() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {f.name: st.none() | _VALUES[f.type] for f in SCHEMA}  # every column may be null
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(_row(), min_size=1, max_size=8))
def test_column_wise_bytes_are_the_reference_encoding_and_decode_back(
    rows: list[dict[str, Any]],
) -> None:
    table = rows_table(rows)
    built = [value[1:] for value in row_leaf_bytes(table).to_pylist()]
    assert built == [encode_row(row) for row in rows]
    for row, encoded in zip(rows, built, strict=True):
        assert encoded.startswith(ROW_V2_MAGIC)
        assert decode_row(encoded) == row
        if all(math.isfinite(v) for v in row.values() if type(v) is float):  # JSON has no inf
            assert encode_json_row(orjson.loads(orjson.dumps(row))) == encoded  # a bundle's row
    hashes = table_leaf_hashes(table)
    assert hashes == [hashlib.sha256(b"\x00" + encoded).digest() for encoded in built]
    # Read back from Parquet (chunked columns, decoded pages): the same bytes.
    assert table_leaf_hashes(read_batch(to_parquet(table))) == hashes
    # And without the native hasher (a machine that could not build it): the same hashes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch_sha256, "NATIVE", False)
        assert table_leaf_hashes(table) == hashes
        assert table_records_root(table) == merkle.root(hashes)
    assert table_records_root(table) == merkle.root(hashes)


def test_an_empty_batch_hashes_to_the_empty_tree() -> None:
    # No batcher seals one, but a store may hold one: verify must answer, not raise.
    empty = SCHEMA.empty_table()
    assert table_leaf_hashes(empty) == []
    assert table_records_root(empty) == merkle.EMPTY_ROOT
    assert len(row_leaf_bytes(empty)) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_row(), min_size=1, max_size=5), st.data())
def test_changing_any_one_field_changes_the_records_root(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from(list(SCHEMA)))
    old = rows[index][column.name]
    new = data.draw((st.none() | _VALUES[column.type]).filter(lambda v: not _same(v, old)))
    changed = [dict(row) for row in rows]
    changed[index][column.name] = new
    assert table_records_root(rows_table(changed)) != table_records_root(rows_table(rows))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex()  # 0.0 and -0.0 are different bits, so different rows
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(_row(), st.data())
def test_any_changed_byte_is_refused_or_another_row(
    row: dict[str, Any], data: st.DataObject
) -> None:
    encoded = bytearray(encode_row(row))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_row(bytes(encoded))
    except ValueError:
        return
    assert any(not _same(decoded[name], row[name]) for name in row)


def test_null_and_empty_string_and_zero_encode_apart() -> None:
    base = {f.name: None for f in SCHEMA}
    empty, zero = {**base, "job_id": ""}, {**base, "usage_seq": 0}
    encodings = {encode_row(base), encode_row(empty), encode_row(zero)}
    assert len(encodings) == 3
    assert (
        decode_row(encode_row(empty))["job_id"] == ""
        and decode_row(encode_row(base))["job_id"] is None
    )
    table = rows_table([base, empty, zero])
    assert len(set(table_leaf_hashes(table))) == 3


def test_byte_exact_vectors_as_docs_audit_md_gives_them() -> None:
    nulls = {f.name: None for f in SCHEMA}
    widths = {pa.int64(): 8, pa.float64(): 8, pa.bool_(): 1, pa.string(): 4}
    assert encode_row(nulls) == b"RGA\x02" + b"".join(
        b"\x00" + bytes(widths[f.type]) for f in SCHEMA
    )
    assert len(encode_row(nulls)) == 166
    some = {**nulls, "usage_seq": 1, "event_id": "é"}
    assert encode_row(some).startswith(bytes.fromhex("524741020101000000000000000102000000c3a9"))
    full = {**some, "gpu_seconds": 0.5, "metered": True}
    encoded = encode_row(full)
    assert bytes.fromhex("01000000000000e03f") in encoded  # 0.5, little-endian binary64
    assert decode_row(encoded) == full


def test_decode_refuses_what_no_row_encodes_to() -> None:
    encoded = encode_row({f.name: None for f in SCHEMA})
    for bad, why in [
        (encoded + b"\x00", "after the row"),
        (encoded[:-1], "ends"),
        (b"{" + encoded[1:], "prefix"),
        (encoded[:4] + b"\x02" + encoded[5:], "tag"),
        (encoded[:5] + b"\x01" + encoded[6:], "null with value bytes"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_row(bad)


def test_the_js_encoder_has_the_schema_columns_in_order() -> None:
    text = PROOF_JS.read_text()
    block = text[
        text.index("const ROW_V2_COLUMNS = [") : text.index("];", text.index("ROW_V2_COLUMNS = ["))
    ]
    pairs = re.findall(r'\["(\w+)", "(\w+)"\]', block)
    assert pairs == [(f.name, str(f.type)) for f in SCHEMA]


def _records(count: int, odd: bool = True) -> tuple[list[int], list[bytes], list[str | None]]:
    """Stored records as the usage stream keeps them, with (``odd``) the odd cases the
    column-wise path must treat exactly as ``attestation`` does."""
    dicts = [signed_record(i).to_dict() for i in range(count)]
    if not odd:
        claims = [d.pop("usage_claim") for d in dicts]
        return list(range(10, 10 + count)), [orjson.dumps(d) for d in dicts], claims
    dicts[1]["usage_claim"] = None  # a backend that signs nothing
    dicts[2]["usage_claim"] = "not json"  # malformed: kept whole
    dicts[3]["usage_claim"] = '{"payload": 1, "signature": "s", "key_id": "k"}'
    dicts[4]["node_public_key"] = None  # a record from before settle checks
    dicts[5]["usage_claim"] = ""  # empty: no claim (and no key)
    dicts[6]["error_code"] = 'é\n"\u2028'
    dicts[7]["timestamp"] = 1796185067.0000005  # rounds half to even, as round() does
    dicts[8]["claim_error"] = "a bad signature"
    dicts[8]["node_public_key"] = None
    dicts[9]["job_id"] = "job_1"
    claims = [d.pop("usage_claim") for d in dicts]
    return list(range(10, 10 + count)), [orjson.dumps(d) for d in dicts], claims


def test_the_column_wise_write_path_makes_the_rows_attestation_makes() -> None:
    seqs, records, claims = _records(40)
    expected = [_fallback(*item) for item in zip(seqs, records, claims, strict=True)]
    table = attestations_table(seqs, records, claims)
    assert table.schema == SCHEMA
    assert table.to_pylist() == expected
    assert expected[1]["claim_payload"] is None and expected[2]["claim_payload"] == "not json"
    assert expected[4]["claim_error"] == "the claim was not checked when the request settled"


def test_a_record_the_column_wise_path_does_not_expect_falls_back_to_attestation() -> None:
    seqs, records, claims = _records(12)
    odd = orjson.loads(records[3])
    odd["queue_time_us"] = 1.5  # not an integer: int() truncates it in attestation()
    records[3] = orjson.dumps(odd)
    expected = [_fallback(*item) for item in zip(seqs, records, claims, strict=True)]
    assert attestations_table(seqs, records, claims).to_pylist() == expected
    assert expected[3]["queue_time_us"] == 1


# --- Version-1 batches in a log that now writes version 2 -------------------------------


@pytest.fixture
def mixed_log(tmp_path: Path) -> tuple[Path, list[str]]:
    """A log of a version-1 batch followed by two version-2 batches; its request ids."""
    objects = open_object_store((tmp_path / "cas").as_uri())
    audit_log = open_audit_log(objects, load_signer(tmp_path, ORIGIN), ORIGIN)
    seqs, records, claims = _records(30, odd=False)
    table = attestations_table(seqs, records, claims)
    rows = table.to_pylist()
    assert append_v1(audit_log, rows[:10]).version == 1
    assert audit_log.append(table.slice(10, 10)).version == 2
    assert audit_log.append(table.slice(20, 10)).version == 2
    return tmp_path, [row["request_id"] for row in rows]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_log_of_version_1_and_2_batches_verifies(
    mixed_log: tuple[Path, list[str]], workers: int
) -> None:
    data, _ = mixed_log
    objects = open_object_store((data / "cas").as_uri())
    verifier = load_signer(data, ORIGIN).verifier()
    for check_claims in (True, False):
        report = verify_log(objects, [verifier], ORIGIN, check_claims=check_claims, workers=workers)
        assert report.ok, report.findings
        assert report.records == 30 and report.leaves == 3
        assert report.unclaimed == 0
        assert math.isclose(report.gpu_seconds, 15.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_edited_row_of_either_version_fails_its_batch(
    mixed_log: tuple[Path, list[str]], workers: int
) -> None:
    """A row edited and re-stored under its new hash, the leaf pointed at it: the records root
    no longer matches (and the leaf no longer matches its checkpoints)."""
    data, _ = mixed_log
    objects = open_object_store((data / "cas").as_uri())
    cas = ContentStore(objects)
    for index in (0, 2):
        leaf = BatchLeaf.decode(objects.get(leaf_key(index)))
        rows = read_batch(cas.get(leaf.batch_blake3), leaf.version).to_pylist()
        rows[3]["customer_id"] = "mallory"
        schema = SCHEMA_V1 if leaf.version == 1 else SCHEMA
        edited = BatchLeaf(
            **{**leaf.__dict__, "batch_blake3": cas.put(to_parquet(rows_table(rows, schema)))}
        )
        (data / "cas" / leaf_key(index)).write_bytes(edited.encode())
    report = verify_log(objects, [load_signer(data, ORIGIN).verifier()], ORIGIN, workers=workers)
    where = [f.where for f in report.findings if "records root" in f.what]
    assert len(where) == 2 and where[0].startswith("leaf 0 ") and where[1].startswith("leaf 2 ")


def test_proofs_of_version_1_and_2_rows_verify_and_refuse_an_edit(
    mixed_log: tuple[Path, list[str]],
) -> None:
    data, request_ids = mixed_log
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)
    key = public_key_line(signer)
    for position in (0, 9, 10, 25, 29):
        bundle = bundle_from_store(objects, [signer.verifier()], key, request_ids[position])
        leaf = BatchLeaf.decode(bundle["leaf"].encode())
        assert leaf.version == (1 if position < 10 else 2)
        row, _ = verify_bundle(bundle, [signer.verifier()])
        assert row["request_id"] == request_ids[position]
        assert ("claim_window" in row) is (leaf.version == 2)
        shown = orjson.loads(bundle["row"])
        for name, value in [("customer_id", "mallory"), ("gpu_seconds", 5.0), ("job_id", "")]:
            forged = {
                **bundle,
                "row": orjson.dumps({**shown, name: value}, option=orjson.OPT_SORT_KEYS).decode(),
            }
            with pytest.raises(BundleError, match="inclusion proof"):
                verify_bundle(forged, [signer.verifier()])
        if leaf.version == 2:
            wrong_type = {**shown, "usage_seq": float(shown["usage_seq"])}
            forged = {
                **bundle,
                "row": orjson.dumps(wrong_type, option=orjson.OPT_SORT_KEYS).decode(),
            }
            with pytest.raises(BundleError, match="usage_seq is not a int64"):
                verify_bundle(forged, [signer.verifier()])
            # The row's leaf hash is the hash of its version-2 bytes, which the JSON re-encodes to.
            assert leaf_hash(encode_json_row(shown)) in table_leaf_hashes(rows_table([shown]))


def test_the_column_wise_write_path_keeps_each_window_claims_place() -> None:
    """Claims signed in windows: the column-wise rows equal attestation()'s, place included
    (canonical JSON), and a window field of the wrong shape is kept whole as attestation()
    keeps it."""
    dicts = [record.to_dict() for record in window_signed_records(range(12), window=5)]
    dicts[7]["usage_claim"] = orjson.dumps({**orjson.loads(dicts[7]["usage_claim"]),
                                            "window": "not an object"}).decode()  # fmt: skip
    claims = [d.pop("usage_claim") for d in dicts]
    seqs, records = list(range(12)), [orjson.dumps(d) for d in dicts]
    expected = [_fallback(*item) for item in zip(seqs, records, claims, strict=True)]
    assert attestations_table(seqs, records, claims).to_pylist() == expected
    places = [orjson.loads(row["claim_window"]) for row in expected]
    assert places[7] == "not an object"  # kept as sent: the claims pass refuses it
    assert [place["index"] for place in places[:5]] == [0, 1, 2, 3, 4]
    assert {place["size"] for i, place in enumerate(places) if i != 7} == {5, 2}
