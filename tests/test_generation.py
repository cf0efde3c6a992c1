"""GenerationRequest: the public request body, its field bounds and task/input rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from render_gateway.generation import MAX_SEED, GenerationRequest, describe_validation_error

IMG = "data:image/png;base64,iVBORw0KGgo="


def _error(**body: Any) -> str:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(body)
    return describe_validation_error(info.value)


def test_minimal_request_defaults() -> None:
    request = GenerationRequest.model_validate({"prompt": "a cat"})
    assert request.task == "t2i"
    assert request.prompt == "a cat"
    assert request.modality == "image"
    assert request.image is None and request.mask is None and request.seed is None
    assert request.extra_fields == {}


@pytest.mark.parametrize(
    ("body", "modality"),
    [
        ({"task": "t2i", "prompt": "p", "count": 4, "format": "512"}, "image"),
        ({"task": "i2i", "prompt": "p", "image": IMG, "strength": 0.5}, "image"),
        ({"task": "edit", "prompt": "p", "image": IMG, "mask": IMG}, "image"),
        ({"task": "t2v", "prompt": "p", "duration": 10, "width": 64, "height": 32}, "video"),
        ({"task": "i2v", "prompt": "p", "image": IMG, "duration": 0.5}, "video"),
    ],
)
def test_valid_requests_per_task(body: dict[str, Any], modality: str) -> None:
    request = GenerationRequest.model_validate(body)
    assert request.task == body["task"]
    assert request.modality == modality


def test_request_is_frozen() -> None:
    request = GenerationRequest.model_validate({"prompt": "p"})
    with pytest.raises(ValidationError):
        request.prompt = "other"  # type: ignore[misc]


def test_model_validate_json() -> None:
    request = GenerationRequest.model_validate_json(b'{"prompt": "p", "seed": 0}')
    assert request.seed == 0


# ------------------------------------------------------------------------- task / input rules


@pytest.mark.parametrize("task", ["i2i", "edit", "i2v"])
def test_tasks_needing_an_image(task: str) -> None:
    extra = {"mask": IMG} if task == "edit" else {}
    message = _error(task=task, prompt="p", **extra)
    assert f"task '{task}' needs an 'image'" in message


@pytest.mark.parametrize("task", ["t2i", "t2v"])
def test_tasks_taking_no_image(task: str) -> None:
    assert f"task '{task}' takes no 'image'" in _error(task=task, prompt="p", image=IMG)


def test_edit_needs_mask() -> None:
    assert "task 'edit' needs a 'mask'" in _error(task="edit", prompt="p", image=IMG)


@pytest.mark.parametrize(
    "body",
    [
        {"task": "t2i", "prompt": "p", "mask": IMG},
        {"task": "i2i", "prompt": "p", "image": IMG, "mask": IMG},
        {"task": "i2v", "prompt": "p", "image": IMG, "mask": IMG},
        {"task": "t2v", "prompt": "p", "mask": IMG},
    ],
)
def test_mask_only_for_edit(body: dict[str, Any]) -> None:
    assert f"task '{body['task']}' takes no 'mask'" in _error(**body)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_count_only_for_images(task: str) -> None:
    extra = {"image": IMG} if task == "i2v" else {}
    assert "'count' applies to images only" in _error(task=task, prompt="p", count=2, **extra)


@pytest.mark.parametrize("task", ["t2i", "i2i"])
def test_duration_only_for_video(task: str) -> None:
    extra = {"image": IMG} if task == "i2i" else {}
    assert "'duration' applies to video only" in _error(task=task, prompt="p", duration=2, **extra)


@pytest.mark.parametrize("side", [{"width": 64}, {"height": 64}])
def test_width_and_height_together(side: dict[str, int]) -> None:
    assert "give both 'width' and 'height', or neither" in _error(prompt="p", **side)


def test_format_excludes_width_height() -> None:
    message = _error(prompt="p", format="512", width=64, height=64)
    assert "give either 'format' or 'width'/'height', not both" in message


def test_rule_errors_are_described_on_body() -> None:
    message = _error(task="i2i", prompt="p")
    assert message == "body: task 'i2i' needs an 'image'"
    assert "Value error" not in message


# ------------------------------------------------------------------------------ field bounds


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": "p", "negative_prompt": "x" * 2001}, "negative_prompt"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "seed": 2**32}, "seed"),
        ({"prompt": "p", "strength": 1.01}, "strength"),
        ({"prompt": "p", "count": 0}, "count"),
        ({"prompt": "p", "count": 5}, "count"),
        ({"task": "t2v", "prompt": "p", "duration": 0.4}, "duration"),
        ({"task": "t2v", "prompt": "p", "duration": 10.1}, "duration"),
        ({"prompt": "p", "steps": 0}, "steps"),
        ({"prompt": "p", "steps": 501}, "steps"),
        ({"prompt": "p", "guidance": -0.1}, "guidance"),
        ({"prompt": "p", "cfg": 50.5}, "cfg"),
        ({"prompt": "p", "width": 0, "height": 8}, "width"),
        ({"prompt": "p", "task": "paint"}, "task"),
        ({"prompt": "p", "task": "i2i", "image": ""}, "image"),
        ({}, "prompt"),
    ],
)
def test_field_bounds(body: dict[str, Any], field: str) -> None:
    message = _error(**body)
    assert message.startswith(f"{field}: ")


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x" * 4000},
        {"prompt": "p", "negative_prompt": "x" * 2000},
        {"prompt": "p", "seed": 0},
        {"prompt": "p", "seed": MAX_SEED},
        {"prompt": "p", "strength": 1.0},
        {"prompt": "p", "count": 1},
        {"prompt": "p", "count": 4},
        {"task": "t2v", "prompt": "p", "duration": 0.5},
        {"task": "t2v", "prompt": "p", "duration": 10.0},
    ],
)
def test_field_bounds_inclusive(body: dict[str, Any]) -> None:
    GenerationRequest.model_validate(body)


def test_max_seed_is_32_bit() -> None:
    assert MAX_SEED == 2**32 - 1


# ------------------------------------------------------------------------------ extra fields


def test_extra_keys_are_kept() -> None:
    request = GenerationRequest.model_validate(
        {"prompt": "p", "lora": "style-a", "scheduler": {"name": "ddim", "eta": 0.1}}
    )
    assert request.extra_fields == {"lora": "style-a", "scheduler": {"name": "ddim", "eta": 0.1}}
    assert request.model_dump()["lora"] == "style-a"
    # A copy: mutating it does not change the request.
    request.extra_fields["lora"] = "other"
    assert request.extra_fields["lora"] == "style-a"


def test_describe_validation_error_joins_several_problems() -> None:
    message = _error(prompt="", seed=-5, count=9)
    parts = message.split("; ")
    assert [p.split(":")[0] for p in parts] == ["prompt", "seed", "count"]
    assert "seed: Input should be greater than or equal to 0" in message
