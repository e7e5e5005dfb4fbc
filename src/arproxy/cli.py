"""Command-line entry points: `arproxy serve`, `check-config` and `check`."""

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

    offline = commands.add_parser(
        "check",
        help="run the checks on a message file and print our Authentication-Results field",
        description="Run arproxy's checks offline on a message, as if it had arrived from "
        "--client-ip with --helo and --mail-from, and print the Authentication-Results "
        "field arproxy would write. Without --client-ip only DKIM and DMARC run.",
    )
    offline.add_argument("message", metavar="FILE", help="the message (- for standard input)")
    offline.add_argument("--config", metavar="PATH", help="configuration (DNS, authserv-id)")
    offline.add_argument("--client-ip", metavar="IP", help="the SMTP client's address")
    offline.add_argument("--helo", metavar="NAME", help="the client's EHLO/HELO argument")
    offline.add_argument("--mail-from", metavar="ADDR", help='the MAIL FROM address ("<>" = null)')
    offline.add_argument("--auth-user", metavar="USER", help="the SMTP AUTH identity, if any")
    offline.add_argument(
        "--nameserver",
        metavar="IP[:PORT]",
        action="append",
        default=[],
        help="resolver to use instead of the configured ones (repeatable)",
    )
    offline.set_defaults(run=_check_message)

    passwd = commands.add_parser(
        "passwd",
        help="add a user to an SMTP AUTH users file, or change a password",
        description="Ask for a password (twice on a terminal, once from a pipe) and store "
        "its argon2id hash for USER in FILE, creating the file (mode 0600) if needed.",
    )
    passwd.add_argument("file", metavar="FILE")
    passwd.add_argument("user", metavar="USER")
    passwd.set_defaults(run=_passwd)
    return parser


def _passwd(args: argparse.Namespace) -> int:
    from arproxy.users import passwd_main  # noqa: PLC0415

    return passwd_main(args.file, args.user, None)


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
    from arproxy.service import StartupError, serve  # noqa: PLC0415  # check-config needs neither

    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        logging.getLogger("arproxy").error("cannot start: %s", exc)
        return EXIT_CONFIG
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


def _check_message(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging("warning")
    from arproxy.offline import OfflineRequest, UsageError, check_message  # noqa: PLC0415

    try:
        request = OfflineRequest.from_args(args)
    except UsageError as exc:
        print(f"arproxy check: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    field = asyncio.run(check_message(config, request))
    sys.stdout.write(field.replace("\r\n", "\n"))
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
