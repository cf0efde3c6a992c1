"""The offline window-claim checker (audit/claim_windows.py) against the full RFC 9162 check:
the same decision for every claim of real windows of every shape, whatever was tampered with,
and one Ed25519 verification per window."""

from __future__ import annotations

import base64
import random
from dataclasses import replace

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit.claim_windows import ClaimColumns, WindowClaims
from render_gateway.audit.merkle import ProofError, leaf_hash, verify_inclusion
from render_gateway.signing_keys import key_id
from render_gateway.usage_claim import InvalidClaim, SignedClaim, sign_window

from support.audit_fixtures import NODE_KEY, make_claim

PUBLIC = NODE_KEY.public_key()
RAW = PUBLIC.public_bytes_raw()
KEY_ID = key_id(PUBLIC)


def _window(size: int, first: int = 0) -> list[SignedClaim]:
    return sign_window([make_claim(first + i) for i in range(size)], NODE_KEY)


def _row(signed: SignedClaim) -> tuple[bytes, str, str]:
    assert signed.window is not None
    return signed.payload, signed.window.to_text(), base64.b64encode(signed.signature).decode()


def _full_check(payload: bytes, window_text: str) -> bool:
    """The plain RFC 9162 check of one claim's proof, from scratch."""
    data = orjson.loads(window_text)
    try:
        path = [bytes.fromhex(node) for node in data["path"]]
        if any(node.hex() != text for node, text in zip(path, data["path"], strict=True)):
            return False
        verify_inclusion(leaf_hash(payload), data["index"], data["size"], path,
                         bytes.fromhex(data["root"]))  # fmt: skip
    except (ProofError, ValueError, TypeError):
        return False
    return True


def _check(checker: WindowClaims, payload: bytes, window_text: str, signature: str) -> bool:
    try:
        checker.check(PUBLIC, RAW, KEY_ID, payload, window_text, signature)
    except InvalidClaim:
        return False
    return True


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 16, 31, 64, 100])
def test_every_claim_of_every_window_shape_holds_in_any_order(size: int) -> None:
    rows = [_row(signed) for signed in _window(size)]
    for order in (list(range(size)), list(reversed(range(size))), random.Random(size).sample(
        range(size), size)):  # fmt: skip
        checker = WindowClaims()
        assert all(_check(checker, *rows[i]) for i in order)
        assert checker.statements_verified == 1  # one Ed25519 verification for the window


def _mutations(rows: list[tuple[bytes, str, str]], rng: random.Random) -> list[tuple[int, str]]:
    """(row, tampered claim_window) pairs: a path element flipped, swapped, dropped or added;
    another index; another row's path."""
    out: list[tuple[int, str]] = []
    for position, (_, text, _) in enumerate(rows):
        data = orjson.loads(text)
        path = data["path"]
        variants = []
        if path:
            k = rng.randrange(len(path))
            flipped = path[k][:-1] + ("0" if path[k][-1] != "0" else "1")
            variants += [
                {**data, "path": [*path[:k], flipped, *path[k + 1 :]]},
                {**data, "path": path[:-1]},
                {**data, "path": [path[k].upper(), *path[1:]] if k == 0 else path[::-1]},
            ]
        variants += [
            {**data, "path": [*path, "00" * 32]},
            {**data, "index": (data["index"] + 1) % data["size"]},
            {**data, "index": data["index"] + data["size"]},
            {**data, "path": orjson.loads(rows[(position + 1) % len(rows)][1])["path"]},
        ]
        out += [(position, orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()) for v in variants]
    return out


@pytest.mark.parametrize("size", [2, 3, 6, 9, 16, 33])
def test_the_checker_decides_exactly_as_the_full_check_with_tampered_paths(size: int) -> None:
    rng = random.Random(size)
    rows = [_row(signed) for signed in _window(size)]
    mutations = _mutations(rows, rng)
    checker = WindowClaims()  # warmed with genuine claims, then fed tampered ones and back
    for position in rng.sample(range(size), size // 2):
        assert _check(checker, *rows[position])
    for position, text in rng.sample(mutations, len(mutations)):
        payload, genuine, signature = rows[position]
        expected = _full_check(payload, text)
        assert _check(checker, payload, text, signature) == expected, (position, text)
        assert _check(checker, payload, genuine, signature)
    assert all(_check(checker, *row) for row in rows)


def test_a_claim_moved_to_another_window_fails() -> None:
    first, second = _window(8), _window(8, first=100)
    checker = WindowClaims()
    assert _check(checker, *_row(second[3]))
    payload, _, _ = _row(first[3])
    _, text, signature = _row(second[3])
    assert not _check(checker, payload, text, signature)  # its place in the other window
    with pytest.raises(InvalidClaim, match="not in its window"):
        checker.check(PUBLIC, RAW, KEY_ID, payload, text, signature)


def test_a_window_signed_by_another_key_fails_for_every_claim() -> None:
    other = Ed25519PrivateKey.generate()
    claims = [replace(make_claim(i), key_id=key_id(other.public_key())) for i in range(4)]
    foreign = sign_window(claims, other)
    checker = WindowClaims()
    for signed in foreign:  # claimed under NODE_KEY's id: the statement does not verify
        payload, text, signature = _row(signed)
        with pytest.raises(InvalidClaim, match="window signature does not verify"):
            checker.check(PUBLIC, RAW, KEY_ID, payload, text, signature)
    assert checker.statements_verified == 0


def test_a_statement_signature_swapped_in_from_another_window_fails() -> None:
    first, second = _window(4), _window(4, first=10)
    payload, text, _ = _row(first[1])
    _, _, other_signature = _row(second[1])
    with pytest.raises(InvalidClaim, match="window signature does not verify"):
        WindowClaims().check(PUBLIC, RAW, KEY_ID, payload, text, other_signature)


def test_a_direct_signature_relabelled_as_a_window_of_one_fails() -> None:
    from render_gateway.usage_claim import ClaimWindow, sign_claim

    direct = sign_claim(make_claim(1), NODE_KEY)
    # A window of one over the same payload: its root is the payload's leaf hash, but the
    # signature is over the payload, not over the domain-separated statement.
    window = ClaimWindow(0, 1, leaf_hash(direct.payload), ())
    signature = base64.b64encode(direct.signature).decode()
    with pytest.raises(InvalidClaim, match="window signature does not verify"):
        WindowClaims().check(PUBLIC, RAW, KEY_ID, direct.payload, window.to_text(), signature)


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"index":0,"size":1,"root":"00"}', '{"index":"0","path":[],"root":"0",'
     '"size":1}', '{"index":0,"path":{},"root":"00","size":1}'],
)  # fmt: skip
def test_a_malformed_window_is_an_invalid_claim(text: str) -> None:
    payload, _, signature = _row(_window(1)[0])
    with pytest.raises(InvalidClaim):
        WindowClaims().check(PUBLIC, RAW, KEY_ID, payload, text, signature)


def test_a_window_met_again_after_capacity_others_is_verified_again() -> None:
    windows = [_window(2, first=10 * i) for i in range(3)]
    checker = WindowClaims(capacity=2)
    for window in windows:
        assert _check(checker, *_row(window[0]))
    assert _check(checker, *_row(windows[0][1]))  # evicted: verified once more, still holds
    assert checker.statements_verified == 4


def _rows(signed: list[SignedClaim]) -> list[dict[str, object]]:
    public = base64.b64encode(RAW).decode()
    return [
        {"claim_payload": s.payload.decode(),
         "claim_window": s.window.to_text() if s.window else None,
         "claim_signature": base64.b64encode(s.signature).decode(), "node_public_key": public,
         "node_key_id": KEY_ID, "claim_error": None}
        for s in signed
    ]  # fmt: skip


def _proven(checker: WindowClaims, rows: list[dict[str, object]]) -> list[bool]:
    """Each row: whether prove_batch proved it, with the rows as one batch."""
    proven = checker.prove_batch(ClaimColumns.of_rows(rows), _node_key)  # type: ignore[arg-type]
    return [at in proven for at in range(len(rows))]


def _node_key(public: str) -> tuple[object, bytes, str]:
    assert public == base64.b64encode(RAW).decode()
    return PUBLIC, RAW, KEY_ID


@pytest.mark.parametrize("size", [1, 2, 5, 8, 11])
def test_a_batch_holding_whole_windows_proves_them_with_one_verify_each(size: int) -> None:
    rows = _rows(_window(size)) + _rows(_window(size, first=50))
    checker = WindowClaims()
    assert all(_proven(checker, rows))
    assert checker.statements_verified == 2


def test_a_window_split_across_batches_or_tampered_is_left_to_the_per_claim_check() -> None:
    rows = _rows(_window(6))
    checker = WindowClaims()
    assert not any(_proven(checker, rows[:4]))  # not whole: nothing proven here
    tampered = []
    for column, value in (("claim_signature", base64.b64encode(bytes(64)).decode()),
                          ("claim_payload", rows[0]["claim_payload"])):  # fmt: skip
        forged = [dict(row) for row in rows]
        forged[2][column] = value
        tampered.append(forged)
    path_edit = [dict(row) for row in rows]
    window = orjson.loads(str(path_edit[3]["claim_window"]))
    window["path"][0] = "ef" * 32
    path_edit[3]["claim_window"] = orjson.dumps(window, option=orjson.OPT_SORT_KEYS).decode()
    tampered.append(path_edit)
    spaced = [dict(row) for row in rows]  # the same place spelt otherwise: not canonical
    spaced[1]["claim_window"] = str(spaced[1]["claim_window"]).replace(",", ", ")
    tampered.append(spaced)
    for forged in tampered:
        proven = _proven(checker, forged)
        for row, was_proven in zip(forged, proven, strict=True):
            if was_proven:  # never a row the full check would refuse
                payload = str(row["claim_payload"]).encode()
                text, signature = str(row["claim_window"]), str(row["claim_signature"])
                assert _check(WindowClaims(), payload, text, signature)
        assert not all(proven)
    # A copy of a proven row with another signature, in the same batch, is not proven by its
    # twin (another signature is another group), and does not spoil its twin's window.
    twin = {**rows[0], "claim_signature": base64.b64encode(bytes(64)).decode()}
    assert _proven(checker, [*rows, twin]) == [True] * len(rows) + [False]
    # The same row twice in one batch spoils its window: an index given twice proves nothing.
    assert not any(_proven(checker, [*rows, dict(rows[0])]))
