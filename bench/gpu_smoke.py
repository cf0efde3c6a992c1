"""On a CUDA machine: stream a run, cancel one mid-way, and check the signed claims.

    python bench/gpu_smoke.py MODEL_DIR

Prints the device, per-step progress count, the cancelled run's steps, and both claims; exits
non-zero if anything does not hold. (The CPU equivalents are in tests/worker.)
"""

from __future__ import annotations

import base64
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.usage_claim import SignedClaim, verify_claim
from worker_overhead import start_worker


def events(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    out, kind = [], "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            out.append((kind, orjson.loads(line[5:])))
    return out


def main() -> None:
    model_dir = Path(sys.argv[1])
    process, url = start_worker(model_dir, model_dir.parent / "smoke-worker", "cuda")
    try:
        node = httpx.get(url + "/v2/node").json()
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(node["public_key"]))
        assert node["device"]["kind"] == "cuda", node
        body = {"request": {"prompt": "a fox", "seed": 3, "steps": 8, "width": 256, "height": 256}}
        with httpx.stream(
            "POST", url + "/v2/models/demo/generate_stream", json=body, timeout=120
        ) as r:
            seen = events(r)
        assert [k for k, _ in seen] == ["progress"] * 8 + ["result"], [k for k, _ in seen]
        params = seen[-1][1]["parameters"]
        assert isinstance(params, dict)
        claim = verify_claim(SignedClaim.from_text(str(params["usage_claim"])), key)
        print(f"stream: 8 progress events then result; claim verified: {claim}")
        # Device time so far, read from CUDA events without a sync: never decreasing, never
        # above the final figure (it may lag by the steps still queued on the GPU).
        used = [float(data["gpu_seconds"]) for _, data in seen[:-1]]  # type: ignore[arg-type]
        assert used == sorted(used) and used[-1] <= float(params["gpu_seconds"]), used
        print(f"progress gpu_seconds: {used} (final {params['gpu_seconds']})")

        cancelled: list[tuple[str, dict[str, object]]] = []
        # 500 steps: the request maximum (schedulers refuse more than their training steps).
        long = {"request": {"prompt": "long", "steps": 500}, "id": "req_gpu_cancel"}
        first_progress = threading.Event()

        def consume() -> None:
            kind = "message"
            with httpx.stream(
                "POST", url + "/v2/models/demo/generate_stream", json=long, timeout=120
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        cancelled.append((kind, orjson.loads(line[5:])))
                        first_progress.set()

        thread = threading.Thread(target=consume)
        thread.start()
        assert first_progress.wait(60), "no progress from the long run"
        time.sleep(0.2)
        assert httpx.delete(url + "/v2/models/demo/requests/req_gpu_cancel").status_code == 204
        thread.join(60)
        kind, data = cancelled[-1]
        assert kind == "cancelled", kind
        params = data["parameters"]
        assert isinstance(params, dict)
        claim = verify_claim(SignedClaim.from_text(str(params["usage_claim"])), key)
        assert claim.status == "cancelled" and 0 < claim.steps_completed < 500
        print(f"cancel: stopped after {claim.steps_completed}/500 steps; claim verified: {claim}")
        stats = httpx.get(url + "/v2/models/demo/stats").json()["model_stats"][0]["render"]
        assert stats["in_flight"] == 0, stats
        print(f"stats after: {stats}")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
