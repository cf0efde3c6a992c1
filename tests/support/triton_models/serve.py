"""A real Triton (PyTriton 0.7.0, tritonserver 2.51) with the test models of issue 13.

Run by the Triton venv's python (numpy<2, PyTriton), never imported by the tests:

    serve.py --http-port P --grpc-port Q --repository DIR --events FILE

Models follow Render's backend convention: input ``request`` (BYTES [1], the generation JSON),
output ``images`` (BYTES, PNG), optional ``gpu_seconds`` (FP64 [1]) and ``seed`` (INT64 [1]).

* ``painter``, ``plain``, ``broken``: PyTriton callables bound to this process.
* ``stepper``, ``stepper_stream``: raw Python-backend models (``raw/*.py``) written into the
  model repository, because only those can ask Triton ``is_cancelled()`` — PyTriton's proxy
  does not pass cancellation on to its callables.

Prints one JSON line ``{"ready": true, ...}`` once every model is ready, then serves until
SIGTERM. Every model appends its events (start/step/done/cancelled/error) to the events file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from convention import parse_request, png, record, size_of
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

HERE = Path(__file__).resolve().parent
BYTES_1 = {"dtype": bytes, "shape": (1,)}
# No batching: the request is shape [1] as sent, and each callable sees one request at a time.
UNBATCHED = ModelConfig(batching=False, max_batch_size=0)

RAW_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "request" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
{outputs}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "events_path" value {{ string_value: "{events}" }} }}
{extra}
"""
RAW_MODELS: dict[str, dict[str, Any]] = {
    "stepper": {"outputs": [("images", "TYPE_STRING")], "decoupled": False},
    "stepper_stream": {
        "outputs": [("images", "TYPE_STRING"), ("step", "TYPE_INT64"), ("steps", "TYPE_INT64")],
        "decoupled": True,
    },
}


def write_raw_models(repository: Path, events: Path) -> None:
    """Each raw model as Triton wants it: ``<name>/config.pbtxt`` and ``<name>/1/model.py``
    (with ``convention.py`` beside it, which the stub can import from the model's folder)."""
    for name, spec in RAW_MODELS.items():
        version = repository / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "raw" / f"{name}.py", version / "model.py")
        shutil.copy(HERE / "convention.py", version / "convention.py")
        outputs = ",\n".join(
            f'  {{ name: "{out}" data_type: {dtype} dims: [ 1 ] }}'
            for out, dtype in spec["outputs"]
        )
        extra = "model_transaction_policy { decoupled: true }" if spec["decoupled"] else ""
        config = RAW_CONFIG.format(name=name, outputs=outputs, events=events, extra=extra)
        (repository / name / "config.pbtxt").write_text(config)


def one_request(request: Any) -> dict[str, Any]:
    return parse_request(request["request"][0])


def painter_callable(events: Path) -> Any:
    def painter(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            started = time.monotonic()
            fields = one_request(request)
            prompt = fields.get("prompt")
            record(
                str(events), "painter", "start", None, prompt=prompt, parameters=request.parameters
            )
            time.sleep(float(fields.get("sleep_s", 0.0)))
            seed = int(fields.get("seed", 0))
            image = png(*size_of(fields), seed)
            elapsed = time.monotonic() - started
            record(str(events), "painter", "done", None, prompt=prompt)
            responses.append(
                {
                    "images": np.array([image], dtype=np.object_),
                    "gpu_seconds": np.array([elapsed], dtype=np.float64),
                    "seed": np.array([seed], dtype=np.int64),
                }
            )
        return responses

    return painter


def plain_callable(events: Path) -> Any:
    def plain(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            fields = one_request(request)
            prompt = fields.get("prompt")
            record(
                str(events), "plain", "start", None, prompt=prompt, parameters=request.parameters
            )
            time.sleep(float(fields.get("sleep_s", 0.0)))
            image = png(*size_of(fields), int(fields.get("seed", 0)))
            record(str(events), "plain", "done", None, prompt=prompt)
            responses.append({"images": np.array([image], dtype=np.object_)})
        return responses

    return plain


def broken_callable(events: Path) -> Any:
    def broken(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        prompt = None
        with contextlib.suppress(Exception):
            prompt = one_request(requests[0]).get("prompt")
        record(str(events), "broken", "error", None, prompt=prompt)
        raise ValueError("input 'request': field 'prompt' is not allowed here (broken model)")

    return broken


def bind_models(triton: Triton, events: Path) -> None:
    request_input = [Tensor(name="request", **BYTES_1)]
    image_output = Tensor(name="images", **BYTES_1)
    triton.bind(
        model_name="painter",
        infer_func=painter_callable(events),
        inputs=request_input,
        outputs=[
            image_output,
            Tensor(name="gpu_seconds", dtype=np.float64, shape=(1,)),
            Tensor(name="seed", dtype=np.int64, shape=(1,)),
        ],
        config=UNBATCHED,
        strict=True,
    )
    triton.bind(
        model_name="plain",
        infer_func=plain_callable(events),
        inputs=request_input,
        outputs=[image_output],
        config=UNBATCHED,
        strict=True,
    )
    triton.bind(
        model_name="broken",
        infer_func=broken_callable(events),
        inputs=request_input,
        outputs=[image_output],
        config=UNBATCHED,
        strict=True,
    )


def wait_all_ready(http_url: str, names: list[str], timeout: float) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if all(client.is_model_ready(name) for name in names):
                    return
            except Exception:
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise TimeoutError(f"models not ready within {timeout}s: {names}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--ready-timeout", type=float, default=110.0)
    args = parser.parse_args()

    started = time.monotonic()
    args.repository.mkdir(parents=True, exist_ok=True)
    args.events.touch()
    write_raw_models(args.repository, args.events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,
        log_verbose=0,
        model_repository=args.repository,
    )
    # PyTriton 0.7 restricts statistics, model-repository, shared-memory... behind an access
    # token by default; a stock tritonserver restricts nothing, and that is what the gateway meets.
    unrestricted = TritonSecurityConfig(restricted_endpoints=[])
    parent = os.getppid()
    with Triton(config=config, security_config=unrestricted) as triton:
        bind_models(triton, args.events)
        http_url = f"127.0.0.1:{args.http_port}"
        names = ["painter", "plain", "broken", *RAW_MODELS]
        # PyTriton starts Triton with --load-model=*, which loads the raw models found in the
        # repository at start; load them explicitly too in case they were not picked up.
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(http_url)
        for name in RAW_MODELS:
            if not client.is_model_ready(name):
                client.load_model(name)
        client.close()
        wait_all_ready(http_url, names, args.ready_timeout)
        ready = {
            "ready": True,
            "http_port": args.http_port,
            "grpc_port": args.grpc_port,
            "models": names,
            "startup_s": round(time.monotonic() - started, 3),
        }
        print(json.dumps(ready), flush=True)
        # Serve until SIGTERM, or until the test process that started us is gone (killed
        # pytest): a Triton must never outlive its session.
        while not stop.wait(0.5) and os.getppid() == parent:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
