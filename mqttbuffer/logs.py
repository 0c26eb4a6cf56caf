"""Logging to stderr: no timestamps under journald (it adds its own), secrets redacted."""

import logging
import os
import sys

REDACTED = "***"


class RedactingFilter(logging.Filter):
    """Replace every known secret in a record's final text, whatever code logged it."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record):
        if self.secrets:
            text = record.getMessage()
            if any(s in text for s in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, REDACTED)
                record.msg, record.args = text, None
        return True


def setup_logging(level="info", secrets=(), environ=None):
    """Send all logs to stderr in one format, replacing any previous setup (workers call it after fork)."""
    environ = os.environ if environ is None else environ
    fmt = "%(levelname)s [%(processName)s] %(message)s"
    if not environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # paho and urllib3 speak at DEBUG about every packet and connection: keep them at INFO and up.
    for noisy in ("urllib3", "paho"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
