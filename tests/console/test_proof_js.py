"""console/static/proof.js in real Chromium against real bundles: proofs of requests a real
gateway served with the reference worker (GET /audit/proofs/{request_id}), each altered in one
way, and bundles the audit modules sign in-process for what only a lying log could produce (a
forged claim in a validly signed batch). verifyBundle and the Python verify_bundle must agree
on every bundle, and the browser must name the step that failed."""

from __future__ import annotations

import base64
import copy
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from selenium.webdriver.remote.webdriver import WebDriver

from render_gateway.audit.attestations import canonical, encode_json_row
from render_gateway.audit.leaves import BatchLeaf
from render_gateway.audit.merkle import MerkleLog, leaf_hash
from render_gateway.audit.proofs import BundleError, make_bundle, verify_bundle
from render_gateway.audit.signed_note import (
    Checkpoint,
    NoteSigner,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from render_gateway.signing_keys import key_id
from render_gateway.usage_claim import ClaimWindow, UsageClaim, sign_window, window_statement

from support.browser import js_errors, open_page, static_server
from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, bearer, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

PROOF_JS = Path(__file__).resolve().parents[2] / "src/render_gateway/console/static/proof.js"
# Batches of two rows, so that both proofs of a bundle have hashes to check (four requests:
# two leaves; the checkpoint signs both).
CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.audit]
batch_records = 2
batch_seconds = 5
"""
)
SMALL = {"width": 64, "height": 64, "steps": 2}
STEPS = ["bundle", "log_key", "checkpoint_signature", "checkpoint", "leaf", "log_inclusion",
         "row", "row_inclusion", "claim"]  # fmt: skip
# The page the browser runs verifyBundle on: loopback http, a secure context for WebCrypto.
# (An empty icon: the browser would otherwise ask for /favicon.ico, a 404 in the console.)
PAGE = '<!doctype html><meta charset=utf-8><link rel=icon href="data:,"><title>proof.js</title>'
VERIFY = """
const [bundle, options, done] = arguments;
import("/proof.js")
  .then((module) => module.verifyBundle(bundle, options))
  .then(done, (error) => done({ thrown: String(error) }));
"""


@dataclasses.dataclass(frozen=True)
class Proved:
    bundles: list[dict[str, Any]]  # one per request, oldest first
    log_key: str  # `render-gateway audit pubkey`: the key a customer pins


@pytest.fixture(scope="module")
def proved(worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proved]:
    gateway = start_gateway(tmp_path_factory.mktemp("proofs"), CONFIG.format(worker=worker.url))
    try:
        grace = bearer(gateway.new_key("grace"))
        request_ids = []
        for seed in range(4):
            response = httpx.post(
                f"{gateway.url}/image/sd/tiny/t2i", headers=grace, timeout=60,
                json={"prompt": "a fox", "seed": seed, **SMALL},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            request_ids.append(response.headers["x-request-id"])
        wait_idle(worker)
        proof_when_sealed(gateway, grace, request_ids[-1])  # the checkpoint covers both leaves
        bundles = [proof_when_sealed(gateway, grace, request_id) for request_id in request_ids]
        yield Proved(bundles, gateway.cli("audit", "pubkey").strip())
    finally:
        stop_gateway(gateway)


def proof_when_sealed(
    gateway: GatewayProcess, headers: dict[str, str], request_id: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{gateway.url}/audit/proofs/{request_id}", headers=headers)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            bundle: dict[str, Any] = response.json()
            return bundle
        assert response.json()["error"] == "proof_not_found"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A blank page beside proof.js, on a test-local static server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("proof-page")
    shutil.copy(PROOF_JS, root / "proof.js")
    (root / "index.html").write_text(PAGE)
    with static_server(root) as url:
        yield url + "/index.html"


@pytest.fixture
def verify_js(browser: WebDriver, page: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """verifyBundle(bundle, options) in Chromium; the page raises no JavaScript error."""
    open_page(browser, page)

    def run(bundle: Any, **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = browser.execute_async_script(VERIFY, bundle, options)
        assert "thrown" not in result, result  # a bad bundle is a result, never an exception
        return result

    yield run
    assert js_errors(browser) == []


def verify_py(
    bundle: dict[str, Any], log_key: str | None = None, node_keys: dict[str, str] | None = None
) -> str | None:
    """The Python verify_bundle's verdict: None when it holds, else BundleError's message."""
    verifiers = [parse_verifier_key(log_key or bundle["log_public_key"])]
    try:
        verify_bundle(bundle, verifiers, node_keys)
    except BundleError as exc:
        return str(exc)
    return None


def failed_step(result: dict[str, Any]) -> str:
    assert result["ok"] is False and result["error"], result
    last = result["steps"][-1]
    assert last["ok"] is False and result["error"] == f"{last['name']}: {last['detail']}"
    assert all(step["ok"] for step in result["steps"][:-1])
    return str(last["name"])


def detail(result: dict[str, Any]) -> str:
    """What the failed step says (proof.js words its failures as verify_bundle does)."""
    return str(result["steps"][-1]["detail"])


def richest(proved: Proved) -> dict[str, Any]:
    """A bundle whose two proofs both have hashes (so flipping one is a real alteration)."""
    bundle = max(proved.bundles, key=lambda b: min(len(b["log_proof"]), len(b["row_proof"])))
    assert bundle["log_proof"] and bundle["row_proof"], "expected two leaves of two rows"
    return copy.deepcopy(bundle)


def test_real_bundles_pass_every_step_in_the_browser_and_in_python(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    for bundle in proved.bundles:
        row = orjson.loads(bundle["row"])
        for log_key in (proved.log_key, None):
            result = verify_js(bundle, **({"logKey": log_key} if log_key else {}))
            assert result["ok"] is True and result["error"] is None, result
            assert [step["name"] for step in result["steps"]] == STEPS
            assert all(step["ok"] and step["detail"] for step in result["steps"])
            assert result["pinned"] is (log_key is not None)
            assert result["claim"] == "verified"
            assert verify_py(bundle, log_key) is None
            assert result["row"] == row
            python_row, checkpoint = verify_bundle(bundle, [parse_verifier_key(proved.log_key)])
            assert result["checkpoint"] == {
                "origin": checkpoint.origin,
                "size": checkpoint.size,
                "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
            }
            assert python_row == row
        pinned_nodes = {row["node_key_id"]: row["node_public_key"]}
        result = verify_js(bundle, logKey=proved.log_key, nodeKeys=pinned_nodes)
        assert result["ok"] and result["steps"][-1]["name"] == "node_key", result
        assert verify_py(bundle, proved.log_key, pinned_nodes) is None


def flip_base64(encoded: str) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def with_row(bundle: dict[str, Any], **changes: Any) -> dict[str, Any]:
    row = {**orjson.loads(bundle["row"]), **changes}
    return {**bundle, "row": canonical(row, list(row)).decode()}


def with_checkpoint_text(
    bundle: dict[str, Any], edit: Callable[[list[str]], None]
) -> dict[str, Any]:
    lines = bundle["checkpoint"].split("\n")
    edit(lines)
    return {**bundle, "checkpoint": "\n".join(lines)}


def alter_signature(lines: list[str]) -> None:
    at = next(i for i, line in enumerate(lines) if line.startswith("\N{EM DASH} "))
    name, encoded = lines[at].split(" ")[1:]  # "— <name> <base64(key id ‖ signature)>"
    lines[at] = f"\N{EM DASH} {name} {flip_base64(encoded)}"


def alter_size(lines: list[str]) -> None:
    lines[1] = str(int(lines[1]) + 1)


def other_log_key() -> str:
    key = Ed25519PrivateKey.generate()
    return verifier_key("render-gateway-audit", key.public_key())


ALTERATIONS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "row gpu_seconds": (
        lambda b: with_row(b, gpu_seconds=orjson.loads(b["row"])["gpu_seconds"] * 2),
        "row_inclusion",
    ),
    "a log_proof hash": (
        lambda b: {**b, "log_proof": [flip_base64(b["log_proof"][0]), *b["log_proof"][1:]]},
        "log_inclusion",
    ),
    "a row_proof hash": (
        lambda b: {**b, "row_proof": [flip_base64(b["row_proof"][0]), *b["row_proof"][1:]]},
        "row_inclusion",
    ),
    "the checkpoint's signature": (
        lambda b: with_checkpoint_text(b, alter_signature),
        "checkpoint_signature",
    ),
    "the checkpoint's size": (
        lambda b: with_checkpoint_text(b, alter_size),
        "checkpoint_signature",
    ),
    "the row_index": (lambda b: {**b, "row_index": 1 - b["row_index"]}, "row_inclusion"),
    "the leaf_index": (lambda b: {**b, "leaf_index": b["leaf_index"] + 1}, "leaf"),
    "the row's claim_signature": (
        lambda b: with_row(
            b, claim_signature=flip_base64(orjson.loads(b["row"])["claim_signature"])
        ),
        "row_inclusion",
    ),
    "the bundle version": (lambda b: {**b, "version": 2}, "bundle"),
    "the bundle's own log key": (
        lambda b: {**b, "log_public_key": other_log_key()},
        "checkpoint_signature",
    ),
}


@pytest.mark.parametrize("alteration", ALTERATIONS)
def test_each_alteration_fails_naming_its_step(
    alteration: str, proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    alter, step = ALTERATIONS[alteration]
    bundle = alter(richest(proved))
    own_key = alteration == "the bundle's own log key"
    result = verify_js(bundle) if own_key else verify_js(bundle, logKey=proved.log_key)
    assert failed_step(result) == step, result
    assert result["row"] is None
    # Python refuses it too, in the same words.
    assert verify_py(bundle, None if own_key else proved.log_key) == detail(result)


def test_a_wrong_pinned_log_key_fails_at_the_checkpoint_signature(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    bundle = richest(proved)
    wrong = other_log_key()
    result = verify_js(bundle, logKey=wrong)
    assert failed_step(result) == "checkpoint_signature"
    assert "no signature from a known key" in result["error"]
    assert result["pinned"] is True and result["checkpoint"] is None
    assert verify_py(bundle, wrong) == detail(result)
    unpinned = verify_js(bundle)  # the bundle's own key still checks out: consistent, not pinned
    assert unpinned["ok"] is True and unpinned["pinned"] is False


def test_a_claim_by_an_unpinned_node_key_fails(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    bundle = richest(proved)
    other = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    pinned_nodes = {"0123456789abcdef": other}
    result = verify_js(bundle, logKey=proved.log_key, nodeKeys=pinned_nodes)
    assert failed_step(result) == "node_key"
    assert verify_py(bundle, proved.log_key, pinned_nodes) == detail(result)


# --- Bundles a lying log signs: the row is in the log, its claim is not the backend's --------


def row_hashed_as(leaf: BatchLeaf, row: dict[str, Any]) -> bytes:
    """The bytes a row of ``leaf``'s version is hashed as (canonical JSON, or version 2)."""
    return canonical(row) if leaf.version == 1 else encode_json_row(row)


def signed_by_a_test_log(bundle: dict[str, Any], **row_changes: Any) -> tuple[dict[str, Any], str]:
    """``bundle``'s row (changed) as the only row of a one-leaf log signed by a fresh key, so
    every proof and signature holds and only the claim can fail; and that log's key."""
    row = {**orjson.loads(bundle["row"]), **row_changes}
    real_leaf = BatchLeaf.decode(bundle["leaf"].encode())
    leaf = dataclasses.replace(
        real_leaf, index=0, count=1, gpu_seconds=float(row["gpu_seconds"]),
        records_root=MerkleLog([leaf_hash(row_hashed_as(real_leaf, row))]).root().hex(),
    )  # fmt: skip
    tree = MerkleLog([leaf.hash])
    checkpoint = Checkpoint("test.render/log", 1, tree.root())
    signer = NoteSigner("test-log", Ed25519PrivateKey.generate())
    note = sign_note(checkpoint.to_text(), [signer])
    key = verifier_key(signer.name, signer.private_key.public_key())
    return make_bundle(tree, note, checkpoint, key, leaf, [row], 0), key


def test_a_validly_logged_forged_claim_fails_at_the_claim_step(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    real = richest(proved)
    row = orjson.loads(real["row"])
    control, control_key = signed_by_a_test_log(real)
    result = verify_js(control, logKey=control_key)
    assert result["ok"] is True, result
    assert verify_py(control, control_key) is None
    forged = {
        "claim_signature": {"claim_signature": flip_base64(row["claim_signature"])},
        "gpu_seconds": {"gpu_seconds": row["gpu_seconds"] * 2},
        "request_id": {"request_id": "req_someone_else"},
        "node_key_id": {"node_key_id": "0123456789abcdef"},
        # The worker signs claims in windows (a lone request's: a window of one, no path).
        **window_forgeries(row),
    }
    for what, changes in forged.items():
        bundle, key = signed_by_a_test_log(real, **changes)
        result = verify_js(bundle, logKey=key)
        assert failed_step(result) == "claim", (what, result)
        assert verify_py(bundle, key) == detail(result), what
        assert detail(result).startswith("the attested record's backend claim: ")


def window_forgeries(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Changes to a window claim's row that only the claim check catches."""
    window = orjson.loads(row["claim_window"])

    def placed(**changes: Any) -> dict[str, Any]:
        return {"claim_window": orjson.dumps({**window, **changes}, option=orjson.OPT_SORT_KEYS)
                .decode()}  # fmt: skip

    return {
        "window root": placed(root="ab" * 32),
        "window path": placed(path=[*window["path"], "cd" * 32]),
        "window size": placed(size=window["size"] + 1),
        "window relabelled as direct": {"claim_window": None},
    }


def test_a_window_of_several_claims_verifies_and_its_forgeries_fail(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    """Claim 5 of a window of 7 (a path of three hashes, one level lifted on the right border)
    signed by a node key of the test's, in a log of the test's: it verifies in the browser as in
    Python, and each change to its window fails at the claim step with Python's words."""
    real = richest(proved)
    row = orjson.loads(real["row"])
    node = Ed25519PrivateKey.generate()
    node_id = key_id(node.public_key())
    claims = [
        dataclasses.replace(UsageClaim.decode(row["claim_payload"].encode()), key_id=node_id,
                            request_id=f"req_window{i}", gpu_seconds=0.5 + i)
        for i in range(7)
    ]  # fmt: skip
    signed = sign_window(claims, node)[5]
    assert signed.window is not None and len(signed.window.path) == 3
    windowed = {
        "request_id": "req_window5", "gpu_seconds": 5.5, "claim_payload": signed.payload.decode(),
        "claim_signature": base64.b64encode(signed.signature).decode(), "node_key_id": node_id,
        "node_public_key": base64.b64encode(node.public_key().public_bytes_raw()).decode(),
        "claim_window": signed.window.to_text(),
    }  # fmt: skip
    bundle, key = signed_by_a_test_log(real, **windowed)
    result = verify_js(bundle, logKey=key)
    assert result["ok"] is True and result["claim"] == "verified", result
    assert verify_py(bundle, key) is None
    path = signed.window.to_json()["path"]
    forgeries = {
        **window_forgeries(windowed),
        "path element": {"claim_window": ClaimWindow(5, 7, signed.window.root, (
            signed.window.path[0], bytes(32), signed.window.path[2])).to_text()},
        "moved": {"claim_window": orjson.dumps(
            {**signed.window.to_json(), "index": 4, "path": path}).decode()},
        "statement by another key": {"claim_signature": base64.b64encode(
            Ed25519PrivateKey.generate().sign(window_statement(node_id, 7, signed.window.root))
        ).decode()},
    }  # fmt: skip
    for what, changes in forgeries.items():
        bundle, key = signed_by_a_test_log(real, **{**windowed, **changes})
        result = verify_js(bundle, logKey=key)
        assert failed_step(result) == "claim", (what, result)
        assert verify_py(bundle, key) == detail(result), what
        assert detail(result).startswith("the attested record's backend claim: ")


def test_a_resigned_checkpoint_of_another_size_fails_the_log_proof(
    proved: Proved, verify_js: Callable[..., dict[str, Any]]
) -> None:
    bundle, _ = signed_by_a_test_log(richest(proved))
    signer = NoteSigner("test-log", Ed25519PrivateKey.generate())
    checkpoint = Checkpoint.parse(bundle["checkpoint"].split("\n\n")[0] + "\n")
    bigger = dataclasses.replace(checkpoint, size=2)
    bundle["checkpoint"] = sign_note(bigger.to_text(), [signer]).decode()
    key = verifier_key(signer.name, signer.private_key.public_key())
    result = verify_js(bundle, logKey=key)
    assert failed_step(result) == "log_inclusion", result
    assert verify_py(bundle, key) == detail(result)


def test_garbage_is_a_failed_result_not_an_exception(
    verify_js: Callable[..., dict[str, Any]],
) -> None:
    assert failed_step(verify_js(None)) == "bundle"
    assert failed_step(verify_js({"version": 1, "log_public_key": "not a key"})) == "log_key"
    assert failed_step(verify_js({"version": 1})) == "log_key"
