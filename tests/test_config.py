"""load_settings: TOML file, environment overrides, and refusals that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from render_gateway.config import ConfigError, Settings, load_settings

CONFIG = """
[worker]
host = "0.0.0.0"
port = 9100
cpu_threads = 2
dtype = "float16"

[worker.models.demo]
path = "/models/demo"
max_concurrency = 3
fps = 12

[worker.remote_images]
allow_http = true
max_bytes = 1024
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("RENDER_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "render.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.worker.port == 8001
    assert settings.worker.host == "127.0.0.1"
    assert settings.worker.models == {}
    assert settings.worker.remote_images.allow_http is False


def test_load_from_toml(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, CONFIG))
    worker = settings.worker
    assert (worker.host, worker.port, worker.cpu_threads, worker.dtype) == (
        "0.0.0.0",
        9100,
        2,
        "float16",
    )
    demo = worker.models["demo"]
    assert demo.path == Path("/models/demo")
    assert (demo.max_concurrency, demo.fps, demo.default_steps) == (3, 12, None)
    assert worker.remote_images.allow_http is True
    assert worker.remote_images.max_bytes == 1024
    assert worker.remote_images.enabled is True  # default kept for unset keys


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDER_WORKER__PORT", "9555")
    settings = load_settings(_write(tmp_path, CONFIG))
    assert settings.worker.port == 9555
    # The rest of the file still applies (a deep merge, not a replaced section).
    assert settings.worker.host == "0.0.0.0"
    assert settings.worker.models["demo"].max_concurrency == 3


def test_environment_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDER_WORKER__PORT", "7000")
    assert load_settings().worker.port == 7000


def test_invalid_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDER_WORKER__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="port"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[worker]\nprot = 1\n", "prot"),
        ("[wroker]\nport = 1\n", "wroker"),
        ('[worker.models.demo]\npath = "/m"\nmax_concurency = 2\n', "max_concurency"),
        ("[worker.remote_images]\nallow_https = true\n", "allow_https"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(missing)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    path = _write(tmp_path, "[worker\nport = = 3\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(path)


def test_negative_max_concurrency(tmp_path: Path) -> None:
    path = _write(tmp_path, '[worker.models.demo]\npath = "/m"\nmax_concurrency = -1\n')
    with pytest.raises(ConfigError, match=r"worker\.models\.demo\.max_concurrency"):
        load_settings(path)


def test_model_path_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"worker\.models\.demo\.path"):
        load_settings(_write(tmp_path, "[worker.models.demo]\nfps = 4\n"))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[worker]\nport = 70000\n", "worker.port"),
        ('[worker]\ndtype = "int8"\n', "worker.dtype"),
        ("[worker.remote_images]\ntimeout_seconds = 0\n", "worker.remote_images.timeout_seconds"),
    ],
)
def test_out_of_range_values_are_named(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(_write(tmp_path, text))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "render.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[gateway.plans.pro]\nprice_per_gpu_second = -0.1\n",
         r"gateway\.plans\.pro\.price_per_gpu_second: Input should be greater than or equal to 0"),
        ("[gateway.plans.pro]\nfamily_prices = { flux = -1 }\n",
         r"gateway\.plans\.pro\.family_prices\.flux"),
        ("[gateway.budgets.acme]\nmonthly_cost = -5\n", r"gateway\.budgets\.acme\.monthly_cost"),
        ("[gateway.budgets.acme]\nmonthly_gpu_seconds = 0\n",
         r"gateway\.budgets\.acme\.monthly_gpu_seconds"),
        ('[gateway]\nanonymous_plan = "gold"\n',
         r"gateway\.anonymous_plan: unknown plan 'gold' \(known: admin, default\)"),
        ('[gateway.jwt]\nalgorithms = ["HS256"]\ndefault_plan = "gold"\n',
         r"gateway\.jwt\.default_plan: unknown plan 'gold'"),
        ('[gateway]\ncurrency = "dollars"\n', r"gateway\.currency"),
        ("[gateway.metering]\nflush_interval_seconds = 0\n",
         r"gateway\.metering\.flush_interval_seconds"),
    ],
)  # fmt: skip
def test_bad_pricing_budgets_and_tiers_are_refused_by_name(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(write(tmp_path, text))


def test_configured_plans_replace_the_built_ins_and_need_a_default(tmp_path: Path) -> None:
    text = "[gateway.plans.pro]\nprice_per_gpu_second = 0.1\n"
    with pytest.raises(ConfigError, match=r"gateway\.plans: a plan named 'default' is required"):
        load_settings(write(tmp_path, text))


def test_pricing_and_budget_settings_load(tmp_path: Path) -> None:
    text = (
        '[gateway]\ncurrency = "EUR"\nreservation_gpu_seconds = 2.5\n'
        "[gateway.plans.default]\nprice_per_gpu_second = 0.001\nmonthly_cost = 20\n"
        "[gateway.budgets.acme]\nmonthly_gpu_seconds = 3600\n"
        '[gateway.metering]\nurl = "http://clickhouse:8123/render"\nbatch_rows = 5000\n'
    )
    gateway = load_settings(write(tmp_path, text)).gateway
    assert gateway.currency == "EUR" and gateway.reservation_gpu_seconds == 2.5
    assert gateway.plans["default"].monthly_cost == 20
    assert gateway.budgets["acme"].monthly_gpu_seconds == 3600
    assert gateway.metering.url == "http://clickhouse:8123/render"
    assert gateway.metering.batch_rows == 5000
