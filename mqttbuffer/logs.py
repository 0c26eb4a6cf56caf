"""Logging to stderr: no timestamps under journald (it adds its own), secrets redacted."""

import logging
import os
import sys

REDACTED = "***"


class RedactingFormatter(logging.Formatter):
    """Replace every known secret in a record's final text, traceback included, whatever code
    logged it (an exception's text can quote a header or a URL)."""

    def __init__(self, fmt, secrets):
        super().__init__(fmt)
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record):
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def setup_logging(level="info", secrets=(), environ=None):
    """Send all logs to stderr in one format, replacing any previous setup (workers call it after fork)."""
    environ = os.environ if environ is None else environ
    fmt = "%(levelname)s [%(processName)s] %(message)s"
    if not environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # paho and urllib3 speak at DEBUG about every packet and connection: keep them at INFO and up.
    for noisy in ("urllib3", "paho"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
