from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.mqtt_ingest.config import IngestConfig
from shared.config import ServiceConfig, load_config, secret
from shared.errors import ConfigError

GOOD = """\
site: plant1
instance: ingest1
broker:
  host: 127.0.0.1
  port: 1883
inputs:
  - topic: plant/+/telemetry
    source: gw
    signals:
      - {name: temp, path: data.temp}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ingest.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), IngestConfig, env={})
    assert config.inputs[0].signals[0].path == "data.temp"
    assert config.broker_settings().client_id == "plant1-ingest1"


def test_an_unknown_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  port: 1883", "  prot: 1883"))
    with pytest.raises(ConfigError) as err:
        load_config(path, IngestConfig, env={})
    assert f"{path}:5: broker.prot: unknown key" in str(err.value)


def test_a_nested_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("path: data.temp", "path: data..temp"))
    with pytest.raises(ConfigError) as err:
        load_config(path, IngestConfig, env={})
    assert f"{path}:10: inputs.0.signals.0.path: bad field path" in str(err.value)
    assert "bad field path" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("instance: x\n", "site: Field required"),
        ("site: a/b\ninstance: x\n", "may not contain"),
    ],
)
def test_broken_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), ServiceConfig, env={})


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", ServiceConfig, env={})


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    env = {"EDGEFLEET_BROKER__PORT": "1999", "EDGEFLEET_TIMINGS__STATUS_INTERVAL_S": "2.5"}
    config = load_config(write(tmp_path, GOOD), IngestConfig, env=env)
    assert config.broker.port == 1999
    assert config.timings.status_interval_s == 2.5


def test_passwords_come_from_the_environment_not_the_file(tmp_path: Path) -> None:
    text = GOOD.replace("  port: 1883", "  port: 1883\n  username: edge\n  password_env: EF_PW")
    config = load_config(write(tmp_path, text), IngestConfig, env={})
    with pytest.raises(ConfigError, match="EF_PW is not set"):
        config.broker_settings()
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(
            write(tmp_path, GOOD.replace("  port: 1883", "  password: x")), IngestConfig, env={}
        )


def test_relative_paths_start_at_the_config_files_folder(tmp_path: Path) -> None:
    text = GOOD.replace("  port: 1883", "  port: 1883\n  password_file: secrets/pw")
    config = load_config(write(tmp_path, text), IngestConfig, env={})
    assert config.broker.password_file == tmp_path / "secrets" / "pw"
    assert config.source_dir == tmp_path


def test_a_broker_may_be_written_host_colon_port(tmp_path: Path) -> None:
    """The short form the README shows as the default, `broker: host:port`, loads."""
    text = GOOD.replace("broker:\n  host: 127.0.0.1\n  port: 1883", "broker: 10.1.2.3:1884")
    config = load_config(write(tmp_path, text), IngestConfig, env={})
    assert (config.broker.host, config.broker.port) == ("10.1.2.3", 1884)
    settings = config.broker_settings()
    assert (settings.host, settings.port, settings.client_id) == (
        "10.1.2.3",
        1884,
        "plant1-ingest1",
    )
    host_only = load_config(write(tmp_path, text.replace(":1884", "")), IngestConfig, env={})
    assert (host_only.broker.host, host_only.broker.port) == ("10.1.2.3", 1883)
    with pytest.raises(ConfigError, match=re.escape("ingest.yaml:3: broker: expected 'host:port'")):
        load_config(write(tmp_path, text.replace(":1884", ":mqtt")), IngestConfig, env={})


def test_every_secret_comes_from_one_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment first, else a file (stripped); a missing variable or file names its key."""
    (tmp_path / "pw").write_text("from-file\n")
    monkeypatch.setenv("EF_TEST_SECRET", "from-env")
    assert secret("x.password", "EF_TEST_SECRET", tmp_path / "pw") == "from-env"
    assert secret("x.password", None, tmp_path / "pw") == "from-file"
    assert secret("x.password", None, None) is None
    with pytest.raises(ConfigError, match=re.escape("x.password_file: cannot read it")):
        secret("x.password", None, tmp_path / "absent")
    with pytest.raises(
        ConfigError, match=re.escape("sinks.mes.token_env: variable EF_ABSENT is not set")
    ):
        secret("sinks.mes.token", "EF_ABSENT")


def test_an_environment_override_applies_on_top_of_the_short_form(tmp_path: Path) -> None:
    text = GOOD.replace("broker:\n  host: 127.0.0.1\n  port: 1883", "broker: 10.1.2.3:1884")
    env = {"EDGEFLEET_BROKER__PORT": "1999"}
    config = load_config(write(tmp_path, text), IngestConfig, env=env)
    assert (config.broker.host, config.broker.port) == ("10.1.2.3", 1999)
