"""``serve --roles``: which names it takes, how it overrides the config, and its refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from render_gateway.cli import app
from render_gateway.cli.serve import parse_roles, serve_config
from render_gateway.config import ROLES


@pytest.mark.parametrize(
    ("text", "roles"),
    [
        ("api", ["api"]),
        ("api,scheduler", ["api", "scheduler"]),
        (" reconciler , audit", ["reconciler", "audit"]),  # as typed, spaces around names too
        ("metering,metering", ["metering"]),
        (",".join(ROLES), list(ROLES)),
    ],
)
def test_roles_are_a_comma_list_of_known_names(text: str, roles: list[str]) -> None:
    assert parse_roles(text) == roles


@pytest.mark.parametrize(
    ("text", "named"),
    [("api,schedular", "'schedular'"), ("API", "'API'"), ("api,,audit", "an empty name"),
     ("", "an empty name")],
)  # fmt: skip
def test_an_unknown_role_is_refused_by_name(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named) as refused:
        parse_roles(text)
    assert ", ".join(ROLES) in str(refused.value)


def test_the_flag_replaces_the_config_s_roles_and_its_absence_keeps_them(
    tmp_path: Path,
) -> None:
    assert serve_config(None, tmp_path).roles == list(ROLES)  # no config, no flag: all
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nroles = ["api", "scheduler"]\n')
    assert serve_config(config, tmp_path).roles == ["api", "scheduler"]
    flagged = serve_config(config, tmp_path, host="127.0.0.2", port=0, roles=["audit"])
    assert (flagged.roles, flagged.host, flagged.port, flagged.data_dir) == (
        ["audit"], "127.0.0.2", 0, tmp_path,
    )  # fmt: skip


def test_serve_exits_2_naming_the_bad_role_before_it_starts_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["serve", "--roles", "api,worker", "--data-dir", str(data_dir), "--port", "0"]
    )
    assert result.exit_code == 2
    assert "error: --roles: unknown role 'worker'" in result.stderr
    assert not data_dir.exists()  # no lock, no key store: it stopped at the flag
