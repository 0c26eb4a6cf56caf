"""Secrets from the config, a ``*_file`` or the environment, and which one wins."""

import pytest
import yaml

from mqttbuffer.config.loader import ConfigError, load_config
from mqttbuffer.config.secrets import SECRETS


def load(tmp_path, section, values, environ):
    config = {"api": {"url": "http://127.0.0.1:9/x"}}
    config.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(str(path), environ=environ)


@pytest.mark.parametrize("section, key, file_key, variable", SECRETS, ids=[f"{s}.{k}" for s, k, _, _ in SECRETS])
def test_secrets_from_files_and_the_environment_and_their_precedence(tmp_path, section, key, file_key, variable):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")

    def secret(values, environ):
        return getattr(getattr(load(tmp_path, section, values, environ), section), key)

    assert secret({key: "inline"}, {}) == "inline"
    assert secret({file_key: str(secret_file)}, {}) == "from-file"
    assert secret({file_key: str(secret_file)}, {variable: "from-env"}) == "from-env"
    assert secret({key: "inline"}, {variable: "from-env"}) == "from-env"
    assert secret({}, {variable: "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match=f"{section}.{file_key}: give either {section}.{key} or"):
        load(tmp_path, section, {key: "inline", file_key: str(secret_file)}, {})
