"""Where the API key and the MQTT password come from, and a warning when they are exposed.

Each secret may be given in the config (``api.key``), in a file (``api.key_file``) or in the
environment (``MQTTBUFFER_API_KEY``); the environment wins, then the file, so a world-readable
config needs no secret in it. A config that holds a secret inline and can be read by other users
gets a warning at start.
"""

import os
import stat

from mqttbuffer.config.errors import ConfigError

# (section, key, file key, environment variable)
SECRETS = (
    ("api", "key", "key_file", "MQTTBUFFER_API_KEY"),
    ("mqtt", "password", "password_file", "MQTTBUFFER_MQTT_PASSWORD"),
)


def resolve_secrets(path, cfg, environ):
    """Fill in each secret from its file or the environment; return warnings to log at start."""
    warnings = []
    for section_name, key, file_key, variable in SECRETS:
        section = getattr(cfg, section_name)
        inline, secret_file = getattr(section, key), getattr(section, file_key)
        if inline and secret_file:
            raise ConfigError(path, f"{section_name}.{file_key}",
                              f"give either {section_name}.{key} or {section_name}.{file_key}, not both")
        if secret_file:
            try:
                with open(secret_file, encoding="utf-8") as f:
                    setattr(section, key, f.read().strip())
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(path, f"{section_name}.{file_key}",
                                  f"cannot read {secret_file!r}: {getattr(exc, 'strerror', None) or exc}") from None
        if environ.get(variable):
            setattr(section, key, environ[variable])
        elif inline and _readable_by_others(path):
            warnings.append(f"{path} holds {section_name}.{key} and is readable by other users; chmod 600 it,"
                            f" or move the secret to {section_name}.{file_key} or {variable}")
    return warnings


def _readable_by_others(path):
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False
