"""``stepper_stream``: a raw decoupled Python-backend model that streams its progress.

Per step it sends a response with ``step`` and ``steps`` (INT64 [1]) and no image, then a final
response with ``images`` and the final flag. Before each step it asks
``response_sender.is_cancelled()`` and stops (closing the stream) when Triton says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
from convention import parse_request, png, record, size_of

MODEL = "stepper_stream"
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.events_path = config["parameters"]["events_path"]["string_value"]

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._run(request)
        return None  # decoupled: every answer goes through the response sender

    def _run(self, request: Any) -> None:
        sender = request.get_response_sender()
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
        except Exception as error:
            record(self.events_path, MODEL, "error", request_id, prompt=prompt, error=str(error))
            sender.send(
                pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"bad input 'request': {error}", pb_utils.TritonError.INVALID_ARG
                    )
                ),
                flags=FINAL,
            )
            return
        record(self.events_path, MODEL, "start", request_id, prompt=prompt)
        for step in range(steps):
            if sender.is_cancelled():
                record(self.events_path, MODEL, "cancelled", request_id, prompt=prompt, step=step)
                sender.send(flags=FINAL)
                return
            time.sleep(step_s)
            record(self.events_path, MODEL, "step", request_id, prompt=prompt, step=step + 1)
            progress = [
                pb_utils.Tensor("step", np.array([step + 1], dtype=np.int64)),
                pb_utils.Tensor("steps", np.array([steps], dtype=np.int64)),
            ]
            sender.send(pb_utils.InferenceResponse(output_tensors=progress))
        image = np.array([png(width, height, seed)], dtype=np.object_)
        record(self.events_path, MODEL, "done", request_id, prompt=prompt)
        sender.send(
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("images", image)]),
            flags=FINAL,
        )
