// In-browser verification of an inclusion-proof bundle (GET /audit/proofs/{request_id}): the
// same checks, in the same order, as verify_bundle in src/render_gateway/audit/proofs.py, with
// WebCrypto alone (SHA-256 and Ed25519). A plain ES module: no build step, no dependencies.
//
//   import { verifyBundle } from "./proof.js";
//   const result = await verifyBundle(bundle, { logKey, nodeKeys });
//
// The chain it checks: the checkpoint (a signed note, c2sp.org/signed-note) is signed by the
// log's key; the leaf is in the checkpoint's tree (RFC 9162 inclusion proof); the row is in
// the leaf's records root (a second inclusion proof); the row's backend claim is signed by the
// node key the row names, for this request and these GPU-seconds.
//
// Trust: without `logKey` the bundle's own `log_public_key` is used, which proves only that
// the bundle is consistent with itself; `pinned` in the result says whether the caller pinned
// the key (from `render-gateway audit pubkey`, obtained out of band).

export const BUNDLE_VERSION = 1;
// A leaf's version is how its batch's rows were hashed: 1, each row's canonical JSON text;
// 2, each row's binary encoding (ROW_V2_COLUMNS below; byte-exactly in docs/AUDIT.md).
export const LEAF_VERSIONS = Object.freeze([1, 2]);

// The steps, in the order they run; a failure names the step it happened in.
export const STEPS = Object.freeze([
  "bundle", // the bundle's version
  "log_key", // the verifier key (pinned, or the bundle's own)
  "checkpoint_signature", // the note carries a valid signature by that key
  "checkpoint", // origin, tree size and root hash
  "leaf", // the batch leaf, canonical, at the bundle's leaf_index
  "log_inclusion", // the leaf is in the checkpoint's tree
  "row", // the attested row, canonical JSON
  "row_inclusion", // the row is in the leaf's records root
  "claim", // the backend's signed usage claim for this row
  "node_key", // only with `nodeKeys`: the claim's node key is a pinned one
]);

const HASH_SIZE = 32;
const ED25519_KEY_SIZE = 32;
const ED25519_SIGNATURE_SIZE = 64;
const ALGORITHM_ED25519 = 0x01;
const MAX_SIGNATURES = 100;
const MAX_TREE_SIZE = (1n << 64n) - 1n;
const SIGNATURE_PREFIX = "\u2014 "; // an em dash and a space
const TREE_SIZE = /^(0|[1-9][0-9]{0,19})$/;
const HEX_KEY_ID = /^[0-9a-fA-F]{8}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const LEAF_FIELDS = [
  "batch_blake3", "count", "first_usage_seq", "gpu_seconds", "index", "last_usage_seq",
  "records_root", "timestamp_us", "version", "window_end_us", "window_start_us",
];
const CLAIM_FIELDS = [
  "device_kind", "device_uuid", "ended_at", "gpu_seconds", "key_id", "model", "output_blake3",
  "request_id", "seed", "started_at", "status", "steps_completed", "version",
];
const CLAIM_TEXT_FIELDS = [
  "request_id", "model", "device_uuid", "device_kind", "started_at", "ended_at", "status",
  "key_id",
];
const CLAIM_COUNT_FIELDS = ["seed", "steps_completed", "version"];
// Which of a parsed object's keys held an integer literal (JSON.parse cannot tell 3 from 3.0),
// and the literal of each number (an int64 above 2^53 is exact only as its digits).
const INTEGER_KEYS = Symbol("integer keys");
const NUMBER_LITERALS = Symbol("number literals");
// Version-2 rows: the attestation columns in order with their Arrow types (SCHEMA in
// src/render_gateway/audit/attestations.py; a test holds the two to each other).
const ROW_V2_MAGIC = [0x52, 0x47, 0x41, 0x02]; // "RGA" 0x02
const ROW_V2_COLUMNS = [
  ["usage_seq", "int64"], ["event_id", "string"], ["request_id", "string"],
  ["job_id", "string"], ["customer_id", "string"], ["plan", "string"], ["tier", "string"],
  ["model", "string"], ["backend", "string"], ["device_uuid", "string"],
  ["device_kind", "string"], ["status", "string"], ["error_code", "string"],
  ["ended_at_us", "int64"], ["queue_time_us", "int64"], ["inference_time_us", "int64"],
  ["gpu_seconds", "double"], ["metered", "bool"], ["billable", "bool"],
  ["unit_price", "double"], ["currency", "string"], ["cost_nanos", "int64"],
  ["claim_payload", "string"], ["claim_signature", "string"], ["node_key_id", "string"],
  ["node_public_key", "string"], ["claim_error", "string"], ["claim_window", "string"],
];
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const WINDOW_STATEMENT_PREFIX = "render usage-claim window v1\n"; // usage_claim.window_statement
const MAX_WINDOW_SIZE = 1 << 20;
const LOWER_HEX_HASH = /^[0-9a-f]{64}$/;
const utf8 = new TextEncoder();

/**
 * Check an inclusion-proof bundle. Never throws for a bad bundle: the result says which step
 * failed and why.
 *
 * @param {object} bundle the JSON of GET /audit/proofs/{request_id}
 * @param {{logKey?: string, nodeKeys?: string[] | Object<string, string>}} options
 *   logKey: the log's verifier key (`<name>+<hex id>+<base64 key>`); default the bundle's own.
 *   nodeKeys: pinned backend node keys (base64 raw Ed25519, as an array or key id → key, as
 *   `--node-keys` files hold them): the row's claim must be signed by one of them.
 * @returns {Promise<{ok: boolean, steps: {name: string, ok: boolean, detail: string}[],
 *   error: string|null, row: object|null,
 *   checkpoint: {origin: string, size: number, root_hash: string}|null, pinned: boolean,
 *   claim: "verified"|"none"|"unverified"|null}>}
 *   row: the attested row, only when every step passed. checkpoint: once its signature holds
 *   (root_hash in base64, as the note spells it). claim: whether the row's backend claim was
 *   checked ("none": the backend signs nothing; "unverified": the gateway could not verify it
 *   when the request settled, so the row proves its place in the log only).
 */
// A signed checkpoint note alone (the console's billing-integrity page): whether `logKey`
// signed it, and what it says. Never throws for a bad note.
export async function verifyCheckpoint(note, logKey) {
  try {
    requireCrypto();
    const verifier = await parseVerifierKey(logKey);
    const checkpoint = parseCheckpoint(await openNote(requireString(note, "checkpoint"), verifier));
    return {
      ok: true,
      error: null,
      checkpoint: { origin: checkpoint.origin, size: Number(checkpoint.size), root_hash: b64encode(checkpoint.rootHash) },
    };
  } catch (error) {
    return { ok: false, error: String(error && error.message ? error.message : error), checkpoint: null };
  }
}

export async function verifyBundle(bundle, { logKey, nodeKeys } = {}) {
  const pinned = logKey !== undefined && logKey !== null;
  const result = {
    ok: false, steps: [], error: null, row: null, checkpoint: null, pinned, claim: null,
  };
  let current = STEPS[0];
  const step = async (name, check) => {
    current = name;
    const detail = await check();
    result.steps.push({ name, ok: true, detail });
  };
  try {
    let verifier, checkpoint, leafBytes, leaf, row, rowBytes;
    await step("bundle", () => {
      if (bundle === null || typeof bundle !== "object" || Array.isArray(bundle)) {
        throw new Error("the bundle is not a JSON object");
      }
      if (bundle.version !== BUNDLE_VERSION) {
        throw new Error(`unknown bundle version ${JSON.stringify(bundle.version)}`);
      }
      return `bundle version ${BUNDLE_VERSION}`;
    });
    await step("log_key", async () => {
      requireCrypto();
      verifier = await parseVerifierKey(pinned ? logKey : bundle.log_public_key);
      return pinned
        ? `pinned log key ${verifier.name}+${hex32(verifier.keyId)}`
        : `the bundle's own log key ${verifier.name}+${hex32(verifier.keyId)} (not pinned)`;
    });
    let text;
    await step("checkpoint_signature", async () => {
      text = await openNote(requireString(bundle.checkpoint, "checkpoint"), verifier);
      return `signed by ${verifier.name}+${hex32(verifier.keyId)}`;
    });
    await step("checkpoint", () => {
      checkpoint = parseCheckpoint(text);
      result.checkpoint = {
        origin: checkpoint.origin,
        size: Number(checkpoint.size),
        root_hash: b64encode(checkpoint.rootHash),
      };
      return `log ${checkpoint.origin} at size ${checkpoint.size}`;
    });
    await step("leaf", () => {
      leafBytes = utf8.encode(requireString(bundle.leaf, "leaf"));
      leaf = parseLeaf(bundle.leaf);
      if (leaf.index !== bundle.leaf_index) {
        throw new Error("the leaf's own index differs from the bundle's");
      }
      return `leaf ${leaf.index}: batch of ${leaf.count} records`;
    });
    await step("log_inclusion", async () => {
      await verifyInclusion(
        await leafHash(leafBytes), BigInt(leaf.index), checkpoint.size,
        decodeProof(bundle.log_proof, "log_proof"), checkpoint.rootHash,
      );
      return `leaf ${leaf.index} is in the tree of ${checkpoint.size}`;
    });
    await step("row", () => {
      const text = requireString(bundle.row, "row");
      row = parseCanonicalJson(text, "the row");
      if (!isObject(row)) throw new Error("the row is not a JSON object");
      // The leaf (in the signed tree) says what its rows were hashed as.
      rowBytes = leaf.version === 1 ? utf8.encode(text) : encodeRowV2(row);
      return `request ${row.request_id}`;
    });
    await step("row_inclusion", async () => {
      const rowIndex = requireIndex(bundle.row_index, "row_index");
      await verifyInclusion(
        await leafHash(rowBytes), BigInt(rowIndex), BigInt(leaf.count),
        decodeProof(bundle.row_proof, "row_proof"), hexDecode(leaf.records_root, "records_root"),
      );
      return `row ${rowIndex} is in leaf ${leaf.index}'s records root`;
    });
    await step("claim", async () => {
      if (row.claim_error !== undefined && row.claim_error !== null) {
        result.claim = "unverified";
        return `not checked: the gateway could not verify the claim when the request settled ` +
          `(${row.claim_error}); the row proves its place in the log only`;
      }
      const problem = await claimProblem(row);
      if (problem !== null) throw new Error(`the attested record's backend claim: ${problem}`);
      result.claim = row.claim_payload === null ? "none" : "verified";
      return row.claim_payload === null
        ? "the backend signs nothing (no claim)"
        : `signed by node key ${row.node_key_id}: ${row.gpu_seconds} GPU-seconds`;
    });
    if (nodeKeys !== undefined && nodeKeys !== null) {
      await step("node_key", () => {
        if (result.claim !== "verified") return "no checked claim to hold to the pinned keys";
        const keys = Array.isArray(nodeKeys) ? nodeKeys : Object.values(nodeKeys);
        if (!keys.includes(row.node_public_key)) {
          throw new Error(
            `the attested record's backend claim is signed by node key ${row.node_key_id}, ` +
            "which is not a pinned node key",
          );
        }
        return `node key ${row.node_key_id} is pinned`;
      });
    }
    result.row = row;
    result.ok = true;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    result.steps.push({ name: current, ok: false, detail: message });
    result.error = `${current}: ${message}`;
  }
  return result;
}

// --- Keys and signed notes (src/render_gateway/audit/signed_note.py) -------------------------

function requireCrypto() {
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new Error("WebCrypto is unavailable (the page is not a secure context)");
  }
}

async function parseVerifierKey(text) {
  requireString(text, "the log key");
  const first = text.indexOf("+");
  const second = first < 0 ? -1 : text.indexOf("+", first + 1);
  if (second < 0) throw new Error("a verifier key has the form <name>+<key id>+<base64 key>");
  const name = text.slice(0, first);
  const hexId = text.slice(first + 1, second);
  requireKeyName(name);
  const raw = b64decodeCanonical(text.slice(second + 1), "verifier key");
  if (raw.length !== 1 + ED25519_KEY_SIZE || raw[0] !== ALGORITHM_ED25519) {
    throw new Error("verifier key is not an Ed25519 key (algorithm byte 0x01 and 32 bytes)");
  }
  const key = raw.slice(1);
  const keyId = await noteKeyId(name, key);
  if (!HEX_KEY_ID.test(hexId)) throw new Error(`key ID ${hexId} is not 8 hexadecimal digits`);
  if (parseInt(hexId, 16) !== keyId) {
    throw new Error(`key ID ${hexId} does not match the name and key (want ${hex32(keyId)})`);
  }
  return { name, keyId, cryptoKey: await importEd25519(key, "the log key") };
}

// SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[:4], big-endian.
async function noteKeyId(name, key) {
  const digest = await sha256(concat(utf8.encode(name + "\n"), Uint8Array.of(ALGORITHM_ED25519), key));
  return ((digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]) >>> 0;
}

function requireKeyName(name) {
  if (!name) throw new Error("a key name must not be empty");
  if (/[\s+\x00-\x1f]/u.test(name)) {
    throw new Error(`key name ${JSON.stringify(name)} must not contain spaces, '+' or control characters`);
  }
}

// The note's text if `verifier` signed it: signatures by other keys are ignored, a bad one by
// this key rejects the note, and at least one by this key must verify.
async function openNote(note, verifier) {
  requireNoControlCharacters(note, "the note");
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("the note has no blank line separating its text from its signatures");
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (!block) throw new Error("the note has no signature lines after its blank line");
  if (!block.endsWith("\n")) throw new Error("the note's last signature line does not end with a newline");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) {
    throw new Error(`the note has ${lines.length} signatures; at most ${MAX_SIGNATURES} allowed`);
  }
  const signatures = lines.map(parseSignatureLine);
  const message = utf8.encode(text);
  let signed = false;
  for (const { name, keyId, signature } of signatures) {
    if (name !== verifier.name || keyId !== verifier.keyId) continue;
    if (!(await ed25519Verify(verifier.cryptoKey, signature, message))) {
      throw new Error(`the signature by known key ${name}+${hex32(keyId)} does not verify`);
    }
    signed = true;
  }
  if (!signed) {
    const names = [...new Set(signatures.map((s) => `${s.name}+${hex32(s.keyId)}`))].sort();
    throw new Error(`the note has no signature from a known key (signed by: ${names.join(", ")})`);
  }
  return text;
}

function parseSignatureLine(line) {
  if (!line.startsWith(SIGNATURE_PREFIX)) {
    throw new Error(`malformed signature line (no em dash and space): ${JSON.stringify(line.slice(0, 80))}`);
  }
  const rest = line.slice(SIGNATURE_PREFIX.length);
  const space = rest.indexOf(" ");
  if (space < 0) {
    throw new Error(`malformed signature line (no space after the key name): ${JSON.stringify(line.slice(0, 80))}`);
  }
  const name = rest.slice(0, space);
  requireKeyName(name);
  const raw = b64decodeCanonical(rest.slice(space + 1), `the signature by ${name}`);
  if (raw.length < 5) throw new Error(`the signature by ${name} is too short to hold a key ID and a signature`);
  const keyId = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
  return { name, keyId, signature: raw.slice(4) };
}

function parseCheckpoint(text) {
  if (!text.endsWith("\n")) throw new Error("checkpoint text must end with a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw new Error("a checkpoint has an origin, a tree size and a root hash line");
  const [origin, sizeLine, rootLine] = lines;
  if (!TREE_SIZE.test(sizeLine)) {
    throw new Error(`checkpoint tree size ${JSON.stringify(sizeLine)} is not a decimal without leading zeros`);
  }
  const size = BigInt(sizeLine);
  const rootHash = b64decodeCanonical(rootLine, "checkpoint root hash");
  if (!origin) throw new Error("checkpoint origin must not be empty");
  if (size > MAX_TREE_SIZE) throw new Error(`checkpoint tree size ${size} is outside 0..2**64-1`);
  if (rootHash.length !== HASH_SIZE) {
    throw new Error(`checkpoint root hash is ${rootHash.length} bytes, not ${HASH_SIZE}`);
  }
  return { origin, size, rootHash };
}

function requireNoControlCharacters(text, what) {
  const found = /[\x00-\x09\x0b-\x1f]/.exec(text);
  if (found) {
    throw new Error(`${what} has control character ${JSON.stringify(found[0])} at offset ${found.index}`);
  }
}

// --- The leaf (src/render_gateway/audit/leaves.py) -------------------------------------------

function parseLeaf(text) {
  const leaf = parseCanonicalJson(text, "the leaf");
  if (!isObject(leaf)) throw new Error("not a leaf: not a JSON object");
  const keys = Object.keys(leaf);
  const missing = LEAF_FIELDS.filter((name) => !keys.includes(name));
  const unknown = keys.filter((name) => !LEAF_FIELDS.includes(name));
  if (missing.length || unknown.length) {
    throw new Error(`not a leaf: missing ${JSON.stringify(missing)}, unknown ${JSON.stringify(unknown)}`);
  }
  if (!LEAF_VERSIONS.includes(leaf.version)) {
    throw new Error(`unknown leaf version ${leaf.version}`);
  }
  requireIndex(leaf.index, "the leaf's index");
  requireIndex(leaf.count, "the leaf's count");
  return leaf;
}

// --- The backend's claim (claim_problem in src/render_gateway/audit/verify.py) ---------------

// Why the row's claim does not hold, or null (it holds, or the backend signs nothing).
async function claimProblem(row) {
  if (row.claim_payload === null || row.claim_payload === undefined) return null;
  if (row.claim_signature === null || row.node_public_key === null ||
      row.claim_signature === undefined || row.node_public_key === undefined) {
    return "the backend's claim has no signature or no node key to check it with";
  }
  let claim;
  try {
    const raw = b64decode(requireString(row.node_public_key, "node_public_key"), "node_public_key");
    const key = await importEd25519(raw, "the node key");
    if ((await nodeKeyId(raw)) !== row.node_key_id) {
      return "the node key does not match the claim's key id";
    }
    const signature = b64decode(requireString(row.claim_signature, "claim_signature"), "claim_signature");
    const payload = requireString(row.claim_payload, "claim_payload");
    if (row.claim_window === null || row.claim_window === undefined) {
      // Ed25519: the node key signed the payload itself.
      if (!(await ed25519Verify(key, signature, utf8.encode(payload)))) {
        throw new Error("claim signature does not verify");
      }
    } else {
      // Ed25519-window: the payload is in the window, whose statement the node key signed.
      await verifyClaimWindow(key, row.node_key_id, utf8.encode(payload), row.claim_window, signature);
    }
    claim = decodeClaim(payload);
    if (claim.key_id !== row.node_key_id) {
      throw new Error("claim payload names a different key than its envelope");
    }
  } catch (error) {
    return `the backend's claim does not verify: ${error.message}`;
  }
  if (claim.request_id !== row.request_id) {
    return `the claim is for request ${claim.request_id}, not this one`;
  }
  if (typeof row.gpu_seconds !== "number" || !isClose(claim.gpu_seconds, row.gpu_seconds, 1e-9, 1e-9)) {
    return `records ${row.gpu_seconds} GPU-seconds, the backend claimed ${claim.gpu_seconds}`;
  }
  return null;
}

// An Ed25519-window claim (usage_claim.verify_window_claim): the inclusion proof of the
// payload's leaf hash in the window's RFC 6962 root, then the node key's signature over the
// statement "render usage-claim window v1\n<key id>\n<size>\n<root hex>\n".
async function verifyClaimWindow(key, keyId, payload, windowText, signature) {
  const place = parseClaimWindow(requireString(windowText, "claim_window"));
  try {
    await verifyInclusion(await leafHash(payload), BigInt(place.index), BigInt(place.size),
      place.path.map((node) => hexDecode(node, "claim window path")), hexDecode(place.root, "claim window root"));
  } catch (error) {
    throw new Error(`the claim is not in its window: ${error.message}`);
  }
  const statement = `${WINDOW_STATEMENT_PREFIX}${keyId}\n${place.size}\n${place.root}\n`;
  if (!(await ed25519Verify(key, signature, utf8.encode(statement)))) {
    throw new Error("claim window signature does not verify");
  }
}

// ClaimWindow.from_json: exactly {index, path, root, size}, hashes in lower-case hex.
function parseClaimWindow(text) {
  let window;
  try {
    window = JSON.parse(text);
  } catch (error) {
    throw new Error(`claim window is not JSON: ${error.message}`);
  }
  const keys = isObject(window) ? Object.keys(window).sort() : [];
  if (keys.join() !== "index,path,root,size") {
    throw new Error("claim window must hold exactly index, path, root and size");
  }
  requireIndex(window.index, "claim window index");
  requireIndex(window.size, "claim window size");
  if (window.size < 1 || window.size > MAX_WINDOW_SIZE) {
    throw new Error(`claim window size ${window.size} is outside 1..${MAX_WINDOW_SIZE}`);
  }
  if (!Array.isArray(window.path)) throw new Error("claim window path must be a list of hashes");
  for (const node of [window.root, ...window.path]) {
    if (typeof node !== "string" || !LOWER_HEX_HASH.test(node)) {
      throw new Error("claim window hashes must be 64 lower-case hex digits");
    }
  }
  return window;
}

// The node key id (src/render_gateway/signing_keys.py): SHA-256(raw key)[:8], in hex.
async function nodeKeyId(raw) {
  return hexEncode((await sha256(raw)).slice(0, 8));
}

function decodeClaim(payload) {
  let claim;
  try {
    claim = parseCanonicalJson(payload, "claim payload");
  } catch (error) {
    throw new Error(`claim payload is not a valid claim: ${error.message}`);
  }
  if (!isObject(claim)) throw new Error("claim payload is not a valid claim: not a JSON object");
  const keys = Object.keys(claim);
  const missing = CLAIM_FIELDS.filter((name) => !keys.includes(name));
  const unknown = keys.filter((name) => !CLAIM_FIELDS.includes(name));
  if (missing.length || unknown.length) {
    throw new Error(`claim payload is not a valid claim: missing ${JSON.stringify(missing)}, unknown ${JSON.stringify(unknown)}`);
  }
  for (const name of CLAIM_TEXT_FIELDS) {
    if (typeof claim[name] !== "string") throw new Error(`claim field '${name}' must be a string`);
  }
  for (const name of CLAIM_COUNT_FIELDS) {
    if (!claim[INTEGER_KEYS].has(name) || claim[name] < 0) {
      throw new Error(`claim field '${name}' must be a non-negative integer`);
    }
  }
  if (typeof claim.gpu_seconds !== "number" || !Array.isArray(claim.output_blake3)) {
    throw new Error("claim payload is not a valid claim: gpu_seconds or output_blake3");
  }
  return claim;
}

// Python's math.isclose.
function isClose(a, b, relTol, absTol) {
  if (a === b) return true;
  if (!Number.isFinite(a) || !Number.isFinite(b)) return false;
  const difference = Math.abs(a - b);
  return difference <= Math.max(relTol * Math.max(Math.abs(a), Math.abs(b)), absTol);
}

// --- RFC 6962 / 9162 Merkle proofs (src/render_gateway/audit/merkle.py) ----------------------

async function leafHash(data) {
  return sha256(concat(Uint8Array.of(0x00), data));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(0x01), left, right));
}

// RFC 9162 §2.1.3.2, with BigInt indices (sizes reach 2**64, beyond JavaScript's bit operators).
async function verifyInclusion(hash, index, size, proof, root) {
  if (index < 0n || size < 0n) {
    throw new Error(`leaf index ${index} and tree size ${size} must not be negative`);
  }
  if (index >= size) throw new Error(`leaf index ${index} is beyond a tree of size ${size}`);
  requireHash(hash, "leaf hash");
  requireHash(root, "root hash");
  proof.forEach((element, position) => requireHash(element, `proof element ${position}`));
  const inner = bitLength(index ^ (size - 1n));
  const want = inner + bitCount(index >> BigInt(inner));
  if (proof.length !== want) {
    throw new Error(`inclusion proof for leaf ${index} of ${size} has ${proof.length} hashes, want ${want}`);
  }
  let fn = index;
  let sn = size - 1n;
  let result = hash;
  for (const sibling of proof) {
    if (sn === 0n) throw new Error("inclusion proof is longer than the path to the root");
    if ((fn & 1n) === 1n || fn === sn) {
      result = await nodeHash(sibling, result);
      // On the right border a node may have no sibling: skip levels until it has one.
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      result = await nodeHash(result, sibling);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("inclusion proof is shorter than the path to the root");
  if (!equalBytes(result, root)) {
    throw new Error(
      `inclusion proof for leaf ${index} of ${size} leads to root ${hexEncode(result)}, ` +
      `not the expected ${hexEncode(root)}`,
    );
  }
}

function decodeProof(proof, what) {
  if (!Array.isArray(proof)) throw new Error(`${what} is not a list of hashes`);
  return proof.map((element, position) => b64decode(requireString(element, `${what}[${position}]`), `${what}[${position}]`));
}

function requireHash(value, what) {
  if (value.length !== HASH_SIZE) throw new Error(`${what} is ${value.length} bytes, not ${HASH_SIZE}`);
}

function bitLength(n) {
  return n === 0n ? 0 : n.toString(2).length;
}

function bitCount(n) {
  return [...n.toString(2)].filter((bit) => bit === "1").length;
}

// --- Canonical JSON (orjson with sorted keys: no whitespace, keys in order, none repeated) ----

// JSON.parse, refusing any spelling but the canonical one's structure. Objects remember which
// keys held integer literals (INTEGER_KEYS), as Python's int-or-float typing does.
function parseCanonicalJson(text, what) {
  let at = 0;
  const fail = (why) => {
    throw new Error(`${what} is not in canonical form: ${why} at offset ${at}`);
  };
  const literal = (word, value) => {
    if (!text.startsWith(word, at)) fail("unexpected character");
    at += word.length;
    return value;
  };
  const string = () => {
    const start = at;
    at += 1;
    while (at < text.length && text[at] !== '"') at += text[at] === "\\" ? 2 : 1;
    if (at >= text.length) fail("unterminated string");
    at += 1;
    return JSON.parse(text.slice(start, at));
  };
  const number = () => {
    const found = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(at));
    if (!found) fail("unexpected character");
    at += found[0].length;
    return {
      value: Number(found[0]),
      integer: found[2] === undefined && found[3] === undefined,
      digits: found[0],
    };
  };
  const value = (holder, key, literals) => {
    const char = text[at];
    if (char === "{") return object();
    if (char === "[") return array();
    if (char === '"') return string();
    if (char === "t") return literal("true", true);
    if (char === "f") return literal("false", false);
    if (char === "n") return literal("null", null);
    const { value: parsed, integer, digits } = number();
    if (integer && holder) holder.add(key);
    if (literals) literals.set(key, digits);
    return parsed;
  };
  const object = () => {
    at += 1;
    const result = {};
    const integers = new Set();
    const literals = new Map();
    Object.defineProperty(result, INTEGER_KEYS, { value: integers });
    Object.defineProperty(result, NUMBER_LITERALS, { value: literals });
    let previous = null;
    if (text[at] === "}") {
      at += 1;
      return result;
    }
    for (;;) {
      if (text[at] !== '"') fail("expected a key");
      const key = string();
      if (previous !== null && compareCodePoints(previous, key) >= 0) {
        fail(`key ${JSON.stringify(key)} is out of order or repeated`);
      }
      previous = key;
      if (text[at] !== ":") fail("expected ':'");
      at += 1;
      Object.defineProperty(result, key, {
        value: value(integers, key, literals), enumerable: true, writable: true,
        configurable: true,
      });
      if (text[at] === ",") {
        at += 1;
      } else if (text[at] === "}") {
        at += 1;
        return result;
      } else {
        fail("expected ',' or '}'");
      }
    }
  };
  const array = () => {
    at += 1;
    const result = [];
    if (text[at] === "]") {
      at += 1;
      return result;
    }
    for (;;) {
      result.push(value(null, null));
      if (text[at] === ",") {
        at += 1;
      } else if (text[at] === "]") {
        at += 1;
        return result;
      } else {
        fail("expected ',' or ']'");
      }
    }
  };
  const parsed = value(null, null);
  if (at !== text.length) fail("trailing characters");
  return parsed;
}

// A parsed row's version-2 bytes (encode_json_row in src/render_gateway/audit/attestations.py):
// "RGA" 0x02, then each column in order as a tag (0 null, 1 value) and its value, little-endian
// (int64 8 bytes, double 8 bytes, bool 1 byte, string a uint32 length and UTF-8); a null's value
// bytes are zeros.
function encodeRowV2(row) {
  const keys = Object.keys(row);
  const names = ROW_V2_COLUMNS.map(([name]) => name);
  if (keys.length !== names.length || !names.every((name) => keys.includes(name))) {
    throw new Error("the row does not have exactly the attestation columns");
  }
  const parts = [Uint8Array.from(ROW_V2_MAGIC)];
  for (const [name, type] of ROW_V2_COLUMNS) {
    const value = row[name];
    const wrong = () => new Error(`the row's ${name} is not a ${type} (or null)`);
    if (type === "string") {
      if (value !== null && typeof value !== "string") throw wrong();
      const bytes = value === null ? new Uint8Array(0) : utf8.encode(value);
      const head = new Uint8Array(5);
      head[0] = value === null ? 0 : 1;
      new DataView(head.buffer).setUint32(1, bytes.length, true);
      parts.push(head, bytes);
      continue;
    }
    const field = new Uint8Array(type === "bool" ? 2 : 9);
    parts.push(field);
    if (value === null) continue;
    const view = new DataView(field.buffer);
    field[0] = 1;
    if (type === "bool") {
      if (typeof value !== "boolean") throw wrong();
      field[1] = value ? 1 : 0;
    } else if (type === "int64") {
      if (typeof value !== "number" || !row[INTEGER_KEYS].has(name)) throw wrong();
      const exact = BigInt(row[NUMBER_LITERALS].get(name));
      if (exact < INT64_MIN || exact > INT64_MAX) throw wrong();
      view.setBigInt64(1, exact, true);
    } else {
      if (typeof value !== "number" || row[INTEGER_KEYS].has(name)) throw wrong();
      view.setFloat64(1, value, true);
    }
  }
  return concat(...parts);
}

function compareCodePoints(a, b) {
  const left = [...a];
  const right = [...b];
  for (let i = 0; i < Math.min(left.length, right.length); i += 1) {
    const difference = left[i].codePointAt(0) - right[i].codePointAt(0);
    if (difference !== 0) return difference;
  }
  return left.length - right.length;
}

// --- Bytes -----------------------------------------------------------------------------------

async function sha256(data) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", data));
}

async function importEd25519(raw, what) {
  if (raw.length !== ED25519_KEY_SIZE) {
    throw new Error(`${what} is not an Ed25519 public key (32 bytes, got ${raw.length})`);
  }
  try {
    return await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
  } catch (error) {
    throw new Error(`${what} is not a valid Ed25519 public key: ${error.message}`);
  }
}

async function ed25519Verify(key, signature, message) {
  if (signature.length !== ED25519_SIGNATURE_SIZE) return false;
  try {
    return await crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
  } catch {
    return false;
  }
}

function requireString(value, what) {
  if (typeof value !== "string") throw new Error(`${what} is not a string`);
  return value;
}

function requireIndex(value, what) {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${what} is not a non-negative integer`);
  return value;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// Standard padded base64, as Python's b64decode(validate=True) takes it.
function b64decode(text, what) {
  if (!BASE64.test(text) || text.length % 4 !== 0) throw new Error(`${what} is not valid base64`);
  let binary;
  try {
    binary = atob(text);
  } catch {
    throw new Error(`${what} is not valid base64`);
  }
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}

// Base64 that re-encodes to itself, so a key or signature has one spelling only.
function b64decodeCanonical(text, what) {
  const raw = b64decode(text, what);
  if (!text || b64encode(raw) !== text) throw new Error(`${what} is not canonical, non-empty base64`);
  return raw;
}

function b64encode(bytes) {
  return btoa(Array.from(bytes, (byte) => String.fromCharCode(byte)).join(""));
}

function hexEncode(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function hexDecode(text, what) {
  if (typeof text !== "string" || !/^([0-9a-fA-F]{2})*$/.test(text)) throw new Error(`${what} is not hexadecimal`);
  return Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
}

function hex32(value) {
  return value.toString(16).padStart(8, "0");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
