"""Command-line entry points: `arproxy serve`, `check-config`, `check`, `passwd`,
`dkim-keygen`, `probe` and `results`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from arproxy import __version__, logformat
from arproxy.config import Config, ConfigError, load_config, parse_config, read_config_text

if TYPE_CHECKING:
    from arproxy.client import Phase, ProbeOptions, ProbeResult

EXIT_OK = 0
EXIT_CONFIG = 2
# probe: AUTHSERV advertised / not advertised / no answer; results: some / none / error
EXIT_FOUND = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 2


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
        "field arproxy would write. Without --client-ip only DKIM, DMARC and ARC run.",
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
    _add_keygen_command(commands)
    _add_probe_command(commands)
    _add_results_command(commands)
    return parser


def _add_keygen_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = commands.add_parser(
        "dkim-keygen",
        help="make a DKIM/ARC signing key and print the TXT record to publish",
        description="Write a new private key to DIR/SELECTOR.DOMAIN.key (mode 0600, "
        "never over an existing file) and print the DNS record that publishes its "
        "public key (RFC 6376 section 3.6.1; Ed25519: RFC 8463).",
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("selector", metavar="SELECTOR")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA modulus size (default 2048)")
    keygen.add_argument("--out", metavar="DIR", default=".", help="where to write the key")
    keygen.set_defaults(run=_dkim_keygen)


def _dkim_keygen(args: argparse.Namespace) -> int:
    from arproxy.names import is_host_name  # noqa: PLC0415
    from arproxy.signing.keys import generate_key, txt_record, write_key  # noqa: PLC0415

    domain, selector = args.domain.lower().rstrip("."), args.selector.lower()
    for what, name in (("domain", domain), ("selector", selector)):
        if not is_host_name(name):
            return _complain(args, f"{name!r} is not a {what} (DNS labels)")
    target = Path(args.out) / f"{selector}.{domain}.key"
    if target.exists():
        return _complain(args, f"{target} exists: not overwritten")
    try:
        key = generate_key(args.type, args.bits)
        write_key(target, key)
    except ValueError as exc:
        return _complain(args, str(exc))
    except OSError as exc:
        return _complain(args, f"cannot write {target}: {exc.strerror or exc}")
    print(f"; private key written to {target}; publish:", file=sys.stderr)
    print(txt_record(domain, selector, key))
    return EXIT_OK


def _load_signing_or_report(config: Config) -> bool:
    """Read the signing keys once, as the workers will: a bad key is one line."""
    from arproxy.signing import SigningKeyError, load_signing  # noqa: PLC0415

    try:
        load_signing(config)
    except SigningKeyError as exc:
        print(f"arproxy: signing key error: {exc}", file=sys.stderr)
        return False
    return True


def _add_probe_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = commands.add_parser(
        "probe",
        help="ask a server whether it advertises AUTHSERV, and its authserv-id",
        description="Run the client procedure of draft-kucherawy-sender-auth-caps: EHLO, "
        "IMAP CAPABILITY or POP3 CAPA (again after logging in with --user), then QUIT or "
        "LOGOUT. Exit 0 when AUTHSERV is advertised, 1 when it is not, 2 when the server "
        "cannot be asked (the reason goes to standard error).",
    )
    probe.add_argument("target", metavar="HOST[:PORT]", help="the server ([v6]:port for IPv6)")
    _add_probe_options(probe)
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(run=_probe)


def _add_results_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    results = commands.add_parser(
        "results",
        help="print the Authentication-Results a mail client may trust",
        description="Print the results of the message's top-level Authentication-Results "
        "fields whose authserv-id is ID (compared as the border compares it; version 1 only; "
        "fields that do not parse are ignored). Exit 0 when there are some, 1 when there "
        "are none, 2 on an error. The probe options apply with --probe.",
    )
    results.add_argument(
        "message", metavar="FILE", nargs="?", default="-", help="the message (- or none: stdin)"
    )
    source = results.add_mutually_exclusive_group(required=True)
    source.add_argument("--trust", metavar="ID", help="the authserv-id to trust (exactly one)")
    source.add_argument(
        "--probe", metavar="HOST[:PORT]", help="learn the id by probing this server first"
    )
    _add_probe_options(results)
    results.add_argument("--json", action="store_true", help="print the results as JSON")
    results.set_defaults(run=_results)


def _add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=("smtp", "imap", "pop3"), default="smtp")
    security = parser.add_mutually_exclusive_group()
    security.add_argument(
        "--starttls",
        dest="security",
        action="store_const",
        const="starttls",
        help="upgrade with STARTTLS (POP3: STLS) before asking",
    )
    security.add_argument(
        "--tls",
        dest="security",
        action="store_const",
        const="tls",
        help="TLS from the first byte (default ports 465, 993, 995)",
    )
    parser.set_defaults(security="plain")
    parser.add_argument(
        "--user", help="log in (SMTP AUTH, IMAP LOGIN, POP3 USER/PASS) and ask again"
    )
    parser.add_argument(
        "--password",
        help="the password for --user (default: asked on the terminal, or one line "
        "from standard input)",
    )
    parser.add_argument("--cafile", metavar="PEM", help="trust these CAs instead of the system's")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the certificate (test servers)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")


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
    text = None  # the file's text as validated: what a supervisor's workers start from
    try:
        if args.config is None:
            config = load_config(None)
        else:
            text = read_config_text(args.config)
            config = parse_config(text, str(args.config))
    except ConfigError as exc:
        print(f"arproxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not _load_signing_or_report(config):
        return EXIT_CONFIG
    # Several workers: each line names the process that wrote it.
    with_pid = config.server.workers > 1
    setup_logging(config.log.level, config.log.format, with_pid=with_pid)
    # ~0.1 s per 1000 messages: three records each (connect, outcome, disconnect).
    logformat.skip_unprinted_fields(config.log.format, with_pid=with_pid)
    path = Path(args.config) if args.config else None  # what SIGHUP rereads
    if config.server.workers > 1:
        from arproxy.supervisor import run  # noqa: PLC0415  # check-config does not need it

        return run(config, path, text)
    from arproxy.service import StartupError, serve  # noqa: PLC0415  # check-config needs neither

    try:
        asyncio.run(serve(config, config_path=path))
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
    if config is None or not _load_signing_or_report(config):
        return EXIT_CONFIG
    print(
        f"{args.path}: OK (listen {config.server.listen}, {config.server.workers} "
        f"worker{'s' if config.server.workers > 1 else ''}, authserv-id "
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


def _probe(args: argparse.Namespace) -> int:
    from arproxy.client import describe  # noqa: PLC0415

    result = _run_probe(args, args.target)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.error is None:
        print(describe(result))
    if result.error is not None:
        return EXIT_ERROR
    return EXIT_FOUND if result.advertised else EXIT_NOT_FOUND


def _results(args: argparse.Namespace) -> int:
    from arproxy.client import result_as_dict, result_as_text, trusted_results  # noqa: PLC0415

    authserv_id = args.trust if args.trust is not None else _probed_id(args)
    if authserv_id is None:
        return EXIT_ERROR
    try:
        message = (
            sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
        )
        results = trusted_results(message, authserv_id)
    except OSError as exc:
        return _complain(args, f"cannot read {args.message}: {exc.strerror or exc}")
    except ValueError as exc:
        return _complain(args, str(exc))
    if args.json:
        print(json.dumps([result_as_dict(res) for res in results], indent=2))
    else:
        for res in results:
            print(result_as_text(res))
    return EXIT_FOUND if results else EXIT_NOT_FOUND


def _probed_id(args: argparse.Namespace) -> str | None:
    """The authserv-id ``--probe`` learns, or None after saying why there is none."""
    from arproxy.client import describe  # noqa: PLC0415

    result = _run_probe(args, args.probe)
    if result.error is not None:
        return None
    if result.authserv_id is None:
        _complain(args, f"{describe(result)}: no authserv-id to trust")
        return None
    return result.authserv_id


def _run_probe(args: argparse.Namespace, target: str) -> ProbeResult:
    """Probe ``target`` as the options say; a failure is said on stderr and returned."""
    from arproxy.client import (  # noqa: PLC0415
        ProbeError,
        ProbeResult,
        default_port,
        parse_target,
        probe,
    )

    phase: Phase = "pre-auth" if args.user is None else "post-auth"
    host, port = target, 0
    try:
        host, given_port = parse_target(target)
        options = _probe_options(args)
        port = given_port or default_port(args.protocol, options.security)
        if options.credentials is not None and options.security == "plain":
            print(
                f"arproxy {args.command}: warning: the password goes unencrypted", file=sys.stderr
            )
        return probe(args.protocol, host, port, options)
    except (ValueError, ProbeError) as exc:
        _complain(args, f"{target}: {exc}")
        return ProbeResult.failed(args.protocol, host, port, phase, str(exc))


def _probe_options(args: argparse.Namespace) -> ProbeOptions:
    from arproxy.client import Credentials, ProbeOptions  # noqa: PLC0415

    credentials = None if args.user is None else Credentials(args.user, _password(args))
    return ProbeOptions(args.security, credentials, args.cafile, args.insecure, args.timeout)


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    if getattr(args, "message", None) == "-":
        raise ValueError("give --password: standard input carries the message")
    return sys.stdin.readline().rstrip("\r\n")


def _complain(args: argparse.Namespace, problem: str) -> int:
    print(f"arproxy {args.command}: {problem}", file=sys.stderr)
    return EXIT_ERROR


def setup_logging(
    level: str, form: Literal["text", "json"] = "text", *, with_pid: bool = False
) -> None:
    logformat.setup(level, form, with_pid=with_pid)
    # aiosmtpd logs every command line at INFO (and would log AUTH exchanges), and
    # its warnings echo client bytes unescaped: ours give one escaped line per
    # decision, so aiosmtpd only speaks for errors.
    logging.getLogger("mail.log").setLevel(max(logging.ERROR, logging.root.level))
