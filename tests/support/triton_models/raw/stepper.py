"""``stepper``: a raw Python-backend model (not decoupled) that honours cancellation.

Runs ``steps`` steps of ``step_s`` seconds, asking Triton ``request.is_cancelled()`` before
each one, so a test can show that a gRPC cancel reaches the model and stops it. Outputs
``images`` only (it meters nothing).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
from convention import parse_request, png, record, size_of

MODEL = "stepper"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.events_path = config["parameters"]["events_path"]["string_value"]

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._run(request) for request in requests]

    def _run(self, request: Any) -> Any:
        request_id = request.request_id() or None
        prompt = None
        try:
            raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy()[0]
            fields = parse_request(raw)
            prompt = fields.get("prompt")
            steps = int(fields.get("steps", 20))
            step_s = float(fields.get("step_s", 0.05))
            width, height = size_of(fields)
            seed = int(fields.get("seed", 0))
        except Exception as error:  # a bad request is the caller's fault: say so
            record(self.events_path, MODEL, "error", request_id, prompt=prompt, error=str(error))
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    f"bad input 'request': {error}", pb_utils.TritonError.INVALID_ARG
                )
            )
        record(self.events_path, MODEL, "start", request_id, prompt=prompt)
        for step in range(steps):
            if request.is_cancelled():
                record(self.events_path, MODEL, "cancelled", request_id, prompt=prompt, step=step)
                return pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
                )
            time.sleep(step_s)
            record(self.events_path, MODEL, "step", request_id, prompt=prompt, step=step + 1)
        image = png(width, height, seed)
        record(self.events_path, MODEL, "done", request_id, prompt=prompt)
        images = pb_utils.Tensor("images", np.array([image], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[images])
