"""console/static/proof.js under Node's WebCrypto, against bundles of a real log holding both a
version-1 batch (rows hashed as canonical JSON) and version-2 batches (rows hashed as their
binary encoding): real rows, real claims, real signed checkpoints. Runs where ``node`` is on
PATH (the Chromium tests in test_proof_js.py need /usr/bin/chromium); verifyBundle and the
Python verify_bundle must agree on every bundle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from render_gateway.audit.attestations import attestations_table, canonical
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.audit.leaves import BatchLeaf
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.proofs import BundleError, bundle_from_store, verify_bundle
from render_gateway.audit.signed_note import parse_verifier_key
from render_gateway.stores.objects import open_object_store

from support.audit_fixtures import append_v1, signed_record

PROOF_JS = Path(__file__).resolve().parents[2] / "src/render_gateway/console/static/proof.js"
NODE = shutil.which("node")
ORIGIN = "render-gateway/test"
# Reads [bundle, options] pairs (a JSON array) on stdin, prints verifyBundle's results.
HARNESS = """
import { verifyBundle } from %s;
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const [bundle, options] of JSON.parse(input)) {
  results.push(await verifyBundle(bundle, options));
}
process.stdout.write(JSON.stringify(results));
"""

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH")


def verify_js(cases: list[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    assert NODE is not None
    script = HARNESS % orjson.dumps(PROOF_JS.as_uri()).decode()
    done = subprocess.run(
        [NODE, "--no-warnings", "--input-type=module", "-e", script],
        input=orjson.dumps(cases), capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    results: list[dict[str, Any]] = orjson.loads(done.stdout)
    return results


def verify_py(bundle: dict[str, Any], log_key: str) -> str | None:
    try:
        verify_bundle(bundle, [parse_verifier_key(log_key)])
    except BundleError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    """Bundles for rows of a version-1 batch and of two version-2 batches, and the log key."""
    data = tmp_path_factory.mktemp("mixed")
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)
    audit_log = open_audit_log(objects, signer, ORIGIN)
    records = [signed_record(i).to_dict() for i in range(12)]
    records[7]["usage_claim"] = None  # a backend that signs nothing
    claims = [r.pop("usage_claim") for r in records]
    table = attestations_table(list(range(1, 13)), [orjson.dumps(r) for r in records], claims)
    append_v1(audit_log, table.slice(0, 4).to_pylist())
    audit_log.append(table.slice(4, 4))
    audit_log.append(table.slice(8, 4))
    key = public_key_line(signer)
    bundles = [
        bundle_from_store(objects, [signer.verifier()], key, row["request_id"])
        for row in table.to_pylist()
    ]
    assert [BatchLeaf.decode(b["leaf"].encode()).version for b in bundles] == [1] * 4 + [2] * 8
    return bundles, key


def test_rows_of_both_versions_verify_in_node_as_in_python(
    proved: tuple[list[dict[str, Any]], str],
) -> None:
    bundles, key = proved
    results = verify_js([(bundle, {"logKey": key}) for bundle in bundles])
    for bundle, result in zip(bundles, results, strict=True):
        assert result["ok"] is True and result["error"] is None, result
        assert verify_py(bundle, key) is None
        python_row, _ = verify_bundle(bundle, [parse_verifier_key(key)])
        assert result["row"] == python_row
        assert result["claim"] == ("none" if python_row["claim_payload"] is None else "verified")


def _edited(bundle: dict[str, Any], **changes: Any) -> dict[str, Any]:
    row = {**orjson.loads(bundle["row"]), **changes}
    return {**bundle, "row": canonical(row, list(row)).decode()}


def test_an_edited_row_of_either_version_fails_in_node_as_in_python(
    proved: tuple[list[dict[str, Any]], str],
) -> None:
    bundles, key = proved
    cases: list[tuple[dict[str, Any], str]] = []
    for bundle in (bundles[1], bundles[5], bundles[10]):
        row = orjson.loads(bundle["row"])
        for changes in (
            {"customer_id": "mallory"}, {"gpu_seconds": row["gpu_seconds"] * 2},
            {"job_id": ""}, {"usage_seq": row["usage_seq"] + 1},
            {"metered": not row["metered"]}, {"error_code": "x"},
        ):  # fmt: skip
            cases.append((_edited(bundle, **changes), "row_inclusion"))
    version_2 = orjson.loads(bundles[5]["row"])
    cases += [
        (_edited(bundles[5], usage_seq=float(version_2["usage_seq"])), "row"),
        (_edited(bundles[5], gpu_seconds=1), "row"),
        (_edited(bundles[5], extra="shown but not hashed"), "row"),
    ]
    results = verify_js([(bundle, {"logKey": key}) for bundle, _ in cases])
    for (bundle, step), result in zip(cases, results, strict=True):
        assert result["ok"] is False, (bundle["row"], result)
        assert result["steps"][-1]["name"] == step, result
        assert verify_py(bundle, key) is not None
        if step == "row_inclusion":  # the same words where both reach the same check
            assert verify_py(bundle, key) == result["steps"][-1]["detail"]
