"""The ``mqttbuffer`` command: run the daemon in the foreground, or check a config."""

import argparse
import logging
import multiprocessing
import sys

import yaml

from mqttbuffer import __version__, delays
from mqttbuffer.config.errors import ConfigError
from mqttbuffer.config.loader import check_writable_paths, load_config
from mqttbuffer.exitcodes import EX_CONFIG, EX_OK, EX_TEMPFAIL
from mqttbuffer.logs import setup_logging
from mqttbuffer.store import Store, StoreDamaged, StoreError
from mqttbuffer.supervisor.lock import StoreLocked, lock_store

DEFAULT_CONFIG = "/etc/mqttbuffer/config.yaml"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="mqttbuffer",
        description="Store-and-forward daemon: MQTT broker -> durable SQLite spool -> HTTP API.",
    )
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                        help=f"YAML or JSON config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print the effective config with secrets redacted, and exit")
    parser.add_argument("--version", action="version", version=f"mqttbuffer {__version__}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config)
        check_writable_paths(cfg)
    except ConfigError as exc:
        print(f"mqttbuffer: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.check:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(redact=True), sort_keys=False, default_flow_style=False))
        return EX_OK
    # The supervisor's own tag from its first line on, not multiprocessing's "MainProcess".
    multiprocessing.current_process().name = "supervisor"
    setup_logging(cfg.logging.level, cfg.secrets())
    for warning in cfg.warnings:
        logging.getLogger("mqttbuffer").warning("%s", warning)
    try:
        # Before anything else touches the store, the client id or the control socket.
        lock_store(cfg.buffer.persist_file)
    except StoreLocked as exc:
        print(f"mqttbuffer: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except OSError as exc:
        print(f"mqttbuffer: {args.config}: buffer.persist_file: cannot lock: {exc.strerror or exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        # Opened once before forking to create the schema and fail early; the supervisor keeps no
        # connection, each worker opens its own.
        Store.open(cfg.buffer.persist_file).close()
    except StoreDamaged as exc:
        # Not a config error (exit 78 would keep systemd from restarting): the persister salvages it.
        logging.getLogger("mqttbuffer").warning("%s; starting anyway to salvage it", exc)
    except StoreError as exc:
        print(f"mqttbuffer: {args.config}: buffer.persist_file: {exc}", file=sys.stderr)
        return EX_CONFIG
    if delays.warning():
        logging.getLogger("mqttbuffer").warning("%s", delays.warning())
    from mqttbuffer.supervisor.main import Supervisor

    return Supervisor(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
