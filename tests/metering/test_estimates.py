"""Cost models: a request's reservation comes from its own work and the model's cost per unit
of work, never from the size of anyone else's request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from render_gateway.metering.estimates import CostEstimator, CostModel
from render_gateway.metering.work import Work, work_of


def work(steps: int | None, size: float = 0.25, task: str = "t2i") -> Work:
    return Work("sd", "tiny", task, steps, size)


def test_work_is_the_request_size_steps_times_pixels_frames_and_count() -> None:
    image = work_of("image", "sd", "tiny", "t2i", "512", {"steps": 8, "count": 2})
    assert (image.steps, image.size) == (8, pytest.approx(512 * 512 * 2 / 1e6))
    sized = work_of("image", "sd", "tiny", "t2i", None, {"width": 64, "height": 32})
    assert (sized.steps, sized.size) == (None, pytest.approx(64 * 32 / 1e6))
    default = work_of("image", "sd", "tiny", "t2i", None, {})
    assert default.size == pytest.approx(1024 * 1024 / 1e6)  # the contract's default format
    video = work_of("video", "wan", "x", "t2v", "480p", {"duration": 2.0, "steps": 4})
    assert video.size == pytest.approx(832 * 480 / 1e6 * 32)
    assert work_of("image", "sd", "tiny", "t2i", "no-such", {}).size == default.size
    assert Work.from_dict(image.to_dict()) == image


def test_a_never_seen_model_reserves_the_floor() -> None:
    estimator = CostEstimator(floor_gpu_seconds=1.0)
    assert estimator.reservation(work(8)) == 1.0
    assert estimator.cost_after(work(8), 4) is None


def test_a_large_run_by_anyone_does_not_raise_a_small_request_reservation() -> None:
    """The lockout of issue 10: one customer's 200-step run made every request of a customer
    with a 3 GPU-s budget answer 402. Now 200 steps teach the cost per step, nothing more."""
    estimator = CostEstimator(floor_gpu_seconds=1.0)
    per_step = 0.01 / 0.25  # GPU-s per step per megapixel-frame
    for steps in (4, 200, 8, 200, 30):
        estimator.observe(work(steps), steps, 0.25 * (0.02 + per_step * steps))
    small = estimator.reservation(work(8))
    assert small == pytest.approx(1.2 * 0.25 * (0.02 + per_step * 8), rel=0.05)
    assert small < 0.15  # 200 steps would be ~2.5 GPU-s
    assert estimator.reservation(work(200)) == pytest.approx(1.2 * 0.25 * (0.02 + 8), rel=0.05)
    # Bigger images cost proportionally more; other tasks of the model are unknown yet.
    assert estimator.reservation(work(8, size=1.0)) == pytest.approx(4 * small, rel=1e-6)
    assert estimator.reservation(work(8, task="i2i")) == 1.0


def test_default_steps_are_learnt_from_runs_that_named_none() -> None:
    estimator = CostEstimator(floor_gpu_seconds=1.0)
    estimator.observe(work(None), 25, 0.5)
    assert estimator.steps_of(work(None)) == 25
    assert estimator.reservation(work(None)) == pytest.approx(0.6)


def test_charges_are_upper_estimates_after_a_run_cost_more_than_predicted() -> None:
    estimator = CostEstimator(floor_gpu_seconds=1.0)
    estimator.observe(work(10), 10, 1.0)
    estimator.observe(work(10), 10, 1.5)  # 1.5× what was predicted then
    assert estimator.cost_after(work(10), 10) >= 1.5  # type: ignore[operator]


@given(
    fixed=st.floats(0.0, 1.0),
    per_step=st.floats(0.001, 1.0),
    steps=st.lists(st.integers(1, 300), min_size=2, max_size=30),
)
def test_the_fit_recovers_a_linear_cost_and_never_goes_negative(
    fixed: float, per_step: float, steps: list[int]
) -> None:
    model = CostModel()
    for n in steps:
        model.observe(1.0, n, fixed + per_step * n)
    fitted = model.fit()
    assert fitted is not None and min(fitted) >= 0
    for n in steps:
        assert model.predict(1.0, n) == pytest.approx(fixed + per_step * n, rel=1e-6, abs=1e-9)


def test_the_state_round_trips() -> None:
    estimator = CostEstimator(floor_gpu_seconds=1.0)
    estimator.observe(work(None), 20, 0.4)
    estimator.observe(work(5, task="i2i"), 5, 0.1)
    again = CostEstimator(floor_gpu_seconds=1.0)
    again.load(estimator.to_list())
    assert again.to_list() == estimator.to_list()
    assert again.reservation(work(None)) == estimator.reservation(work(None))
