"""Typed settings: a TOML file, then ``RENDER_*`` environment variables, then CLI flags.

Unknown keys are refused (with their name), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_DATA_DIR = Path(".render")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """One model served by the worker: a local directory written by ``save_pretrained``."""

    path: Path
    max_concurrency: int = Field(default=1, ge=1, le=64)
    default_steps: int | None = Field(default=None, ge=1, le=500)
    min_side: int | None = Field(default=None, ge=8)
    max_side: int | None = Field(default=None, ge=8, le=8192)
    fps: int = Field(default=8, ge=1, le=60)


class RemoteImagesConfig(_Section):
    """How the worker treats image/mask references that are URLs."""

    enabled: bool = True
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    timeout_seconds: float = Field(default=10.0, gt=0)
    allow_http: bool = False
    allow_private_addresses: bool = False


class WorkerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    data_dir: Path = DEFAULT_DATA_DIR / "worker"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # One intra-op thread per run makes a run's CPU time exactly the calling thread's time.
    cpu_threads: int = Field(default=1, ge=1, le=256)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    remote_images: RemoteImagesConfig = Field(default_factory=RemoteImagesConfig)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RENDER_", env_nested_delimiter="__", extra="forbid"
    )

    worker: WorkerConfig = Field(default_factory=WorkerConfig)


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message names the setting."""


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from ``config_file`` (TOML, optional) overlaid with the environment."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    from pydantic import ValidationError

    try:
        return Settings.model_validate(_FileSettings().model_dump())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read {config_file}: {exc}") from exc
