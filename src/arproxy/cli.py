"""Command-line entry points: `arproxy serve`, `arproxy check-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from arproxy import __version__
from arproxy.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arproxy",
        description="SMTP proxy that authenticates mail and writes Authentication-Results.",
    )
    parser.add_argument("--version", action="version", version=f"arproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy in the foreground")
    serve.add_argument(
        "--config", metavar="PATH", help="TOML configuration (default: the embedded default)"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(run=_check_config)
    return parser


def _load_or_report(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"arproxy: configuration error: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.log.level)
    from arproxy.server import serve  # noqa: PLC0415  # keeps check-config free of aiosmtpd

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        logging.getLogger("arproxy").error(
            "cannot listen on %s: %s", config.server.listen, exc.strerror or exc
        )
        return 1
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.path)
    if config is None:
        return EXIT_CONFIG
    print(
        f"{args.path}: OK (listen {config.server.listen}, authserv-id "
        f"{config.server.authserv_id}, downstream {config.relay.downstream})"
    )
    return EXIT_OK


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every command line at INFO (and would log AUTH exchanges):
    # keep its voice for warnings, ours gives one line per decision.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.root.level))
