"""The reference worker's own overhead per request, measured side by side in one run.

Baseline: the same diffusers pipeline called in this process (no server), same seed, size,
steps and one CPU thread. Ours: a real ``render-gateway worker`` process on 127.0.0.1 serving
the same request over KServe v2 (JSON with base64 output, and the binary tensor extension).
The worker reports its pipeline call's wall time (``pipeline_seconds``); overhead is the
client's end-to-end time minus that, i.e. everything the worker (and HTTP) adds.

    python bench/worker_overhead.py [--requests 40] [--sizes 64,256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

from render_gateway.kserve import codec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(
    model_dir: Path, data_dir: Path, device: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "render_gateway", "worker", "--port", str(port),
               "--model", f"demo={model_dir}", "--data-dir", str(data_dir), "--device", device,
               "--log-level", "warning"]  # fmt: skip
    log = (data_dir.parent / "worker.log").open("wb")  # a file, never an unread pipe
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"worker exited; see {log.name}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("worker did not become ready")


def infer_body(request: dict[str, Any], binary: bool) -> bytes:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "request",
                "datatype": "BYTES",
                "shape": [1],
                "data": [orjson.dumps(request).decode()],
            }
        ]
    }
    if binary:
        body["outputs"] = [{"name": "images", "parameters": {"binary_data": True}}]
    return orjson.dumps(body)


def measure_worker(
    url: str, request: dict[str, Any], count: int, binary: bool
) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {"e2e": [], "pipeline": [], "metered": [], "encode": []}
    with httpx.Client(timeout=120) as client:
        for _ in range(count):
            body = infer_body(request, binary)
            start = time.perf_counter()
            response = client.post(url + "/v2/models/demo/infer", content=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            length = codec.parse_header_length(response.headers.get(codec.HEADER_LENGTH))
            result = codec.decode_response(response.content, length)
            series["e2e"].append(elapsed)
            series["pipeline"].append(float(result.parameters["pipeline_seconds"]))
            series["metered"].append(float(result.parameters["gpu_seconds"]))
            series["encode"].append(float(result.parameters["encode_seconds"]))
    return series


def load_in_process(model_dir: Path, device: str) -> Any:
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(
        str(model_dir), local_files_only=True, torch_dtype=dtype
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_in_process(pipe: Any, request: dict[str, Any], count: int, device: str) -> list[float]:
    """The baseline: diffusers called directly, as a script would, no server in between."""
    import torch

    times = []
    for _ in range(count):
        generator = torch.Generator("cpu").manual_seed(request["seed"])
        start = time.perf_counter()
        pipe(prompt=request["prompt"], num_inference_steps=request["steps"], width=request["width"],
             height=request["height"], generator=generator, output_type="pil")  # fmt: skip
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def verified_claim(url: str) -> str:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from render_gateway.usage_claim import SignedClaim, verify_claim

    key = base64.b64decode(httpx.get(url + "/v2/node").json()["public_key"])
    request = {"prompt": "a receipt", "seed": 7, "steps": 4}
    response = httpx.post(url + "/v2/models/demo/infer", content=infer_body(request, True))
    length = codec.parse_header_length(response.headers.get(codec.HEADER_LENGTH))
    parameters = codec.decode_response(response.content, length).parameters
    signed = SignedClaim.from_text(str(parameters["usage_claim"]))
    verify_claim(signed, Ed25519PublicKey.from_public_bytes(key))  # raises if it fails
    return signed.payload.decode() + f" (pipeline wall {parameters['pipeline_seconds']} s)"


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or Path(scratch) / "demo"
        if not (model_dir / "model_index.json").exists():
            from render_gateway.worker.demo import make_demo_pipeline

            make_demo_pipeline(model_dir)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
        print(
            f"device: {args.device}; demo pipeline, {args.steps} steps; "
            f"{args.requests} requests each (median)"
        )
        process, url = start_worker(model_dir, Path(scratch) / "worker", args.device)
        node = httpx.get(url + "/v2/node").json()["device"]
        print(
            f"worker device: {node['kind']} {node['name']} uuid={node['uuid']} "
            f"({node['uuid_source']}), meter={node['meter']}"
        )
        print(f"signed usage claim of one run, verified with /v2/node's key: {verified_claim(url)}")
        pipe = load_in_process(model_dir, args.device)
        columns = ["size", "in-process", "pipeline", "metered", "png encode", "e2e bin",
                   "e2e json", "overhead bin", "rest bin", "e2e/in-proc"]  # fmt: skip
        table = [" ".join(f"{c:>12}" for c in columns) + "   (ms, median; ratio last)"]
        notes = []
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                request = {"prompt": "a lighthouse at dusk", "seed": 1, "steps": args.steps,
                           "width": size, "height": size}  # fmt: skip
                measure_worker(url, request, args.warmup, binary=True)
                measure_in_process(pipe, request, args.warmup, args.device)
                # Alternate the two sides in rounds so drift (clocks, caches) hits both alike.
                baseline: list[float] = []
                binary: dict[str, list[float]] = {}
                as_json: dict[str, list[float]] = {}
                per_round = max(1, args.requests // args.rounds)
                for _ in range(args.rounds):
                    baseline += measure_in_process(pipe, request, per_round, args.device)
                    for key, values in measure_worker(url, request, per_round, True).items():
                        binary.setdefault(key, []).extend(values)
                    for key, values in measure_worker(url, request, per_round, False).items():
                        as_json.setdefault(key, []).extend(values)
                pairs = zip(binary["e2e"], binary["pipeline"], binary["encode"], strict=True)
                over = [e - p for e, p, _ in pairs]
                rest = [
                    e - p - c
                    for e, p, c in zip(
                        binary["e2e"], binary["pipeline"], binary["encode"], strict=True
                    )
                ]
                ratio = statistics.median(binary["e2e"]) / statistics.median(baseline)
                cells = [str(size), ms(baseline), ms(binary["pipeline"]), ms(binary["metered"]),
                         ms(binary["encode"]), ms(binary["e2e"]), ms(as_json["e2e"]), ms(over),
                         ms(rest), f"{ratio:.3f}x"]  # fmt: skip
                table.append(" ".join(f"{c:>12}" for c in cells))
                pipeline = statistics.median(binary["pipeline"])
                notes.append(
                    f"{size:>5} px: overhead/pipeline {statistics.median(over) / pipeline:.3f}, "
                    f"of which PNG encoding {statistics.median(binary['encode']) / pipeline:.3f}; "
                    f"metered/pipeline wall {statistics.median(binary['metered']) / pipeline:.3f}"
                )
        finally:
            process.terminate()
            process.wait(30)
        print()
        print("\n".join(table))
        print()
        print("\n".join(notes))


if __name__ == "__main__":
    main()
