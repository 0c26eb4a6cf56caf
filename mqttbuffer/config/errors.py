"""The config error, shared by the config loader and the secret resolver (exit code: exitcodes.EX_CONFIG)."""


class ConfigError(Exception):
    """A config problem, to be shown as one line and ended with exit code 78."""

    def __init__(self, path, key, reason):
        super().__init__(path, key, reason)
        self.path, self.key, self.reason = path, key, reason

    def __str__(self):
        return f"{self.path}: {self.key}: {self.reason}" if self.key else f"{self.path}: {self.reason}"
