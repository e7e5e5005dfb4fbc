"""Dovecot from Debian (dovecot-imapd, dovecot-pop3d) as a test IMAP and POP3 server.

Each instance runs in the foreground (`dovecot -F`) with a configuration of its own in a
temporary folder: its own base_dir, state and mail, one passwd-file user, loopback listeners
on free ports for IMAP, IMAPS, POP3 and POP3S, and a self-signed certificate for 127.0.0.1.
With ``authserv=True`` the configuration includes the recipe files in deploy/dovecot/ exactly
as the README tells an administrator to, so the tests exercise what is documented.

As root, Dovecot's own users from the package run the login and internal processes and the
mail user is nobody; as any other user, every process runs as that user.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from arproxy.tls import make_self_signed

from .peers import free_port, stop, wait_for_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "dovecot"
USER = "alice"
PASSWORD = "correct horse"  # a test account on a loopback server


class Dovecot:
    def __init__(self, *, authserv: bool) -> None:
        # Dovecot's unprivileged processes must reach base_dir: not pytest's private tmp_path.
        self.workdir = Path(tempfile.mkdtemp(prefix="arproxy-dovecot-"))
        self.workdir.chmod(0o755)
        self.imap_port, self.imaps_port = free_port(), free_port()
        self.pop3_port, self.pop3s_port = free_port(), free_port()
        self.cert, self.key = self.workdir / "cert.pem", self.workdir / "key.pem"
        make_self_signed(self.cert, self.key, "127.0.0.1")
        self.log_path = self.workdir / "dovecot.log"
        accounts = _Accounts()
        mail, users = self._mail_and_users(accounts)
        config = self.workdir / "dovecot.conf"
        config.write_text(self._config_text(authserv, accounts, mail, users))
        with (self.workdir / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            for port in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port):
                wait_for_port(port, self.process)
        except (RuntimeError, TimeoutError) as exc:
            stop(self.process)
            raise RuntimeError(f"dovecot did not start: {exc}\n{self.log}") from exc

    @property
    def log(self) -> str:
        logs = (self.workdir / "stderr.log", self.log_path)
        return "".join(path.read_text(errors="replace") for path in logs if path.exists())

    def close(self) -> None:
        stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _mail_and_users(self, accounts: _Accounts) -> tuple[Path, Path]:
        """The mail folder, owned by the mail user, and a passwd-file with the test user."""
        mail = self.workdir / "mail"
        mail.mkdir()
        os.chown(mail, accounts.mail_uid, accounts.mail_gid)
        users = self.workdir / "users"
        users.write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{accounts.mail_uid}:{accounts.mail_gid}::{mail}/{USER}::\n"
        )
        users.chmod(0o644)  # the auth process reads it as Dovecot's internal user
        return mail, users

    def _config_text(self, authserv: bool, accounts: _Accounts, mail: Path, users: Path) -> str:
        recipe_global = f"!include {RECIPE}/95-authserv.conf\n" if authserv else ""
        recipe_userdb = f"  !include {RECIPE}/authserv-userdb.conf.ext\n" if authserv else ""
        return f"""
base_dir = {self.workdir}/run
state_dir = {self.workdir}/state
log_path = {self.log_path}
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{mail}/%u
first_valid_uid = {accounts.mail_uid}
first_valid_gid = {accounts.mail_gid}
{accounts.settings}
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
{recipe_userdb}}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No socket, no auth penalty: the failed-login tests would slow every later login.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{recipe_global}"""


class _Accounts:
    """Who runs Dovecot's processes and owns the mail."""

    def __init__(self) -> None:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            self.settings = "default_internal_user = dovecot\ndefault_login_user = dovenull\n"
            return
        me = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(os.getgid()).gr_name
        self.mail_uid, self.mail_gid = me.pw_uid, me.pw_gid
        self.settings = (
            f"default_internal_user = {me.pw_name}\n"
            f"default_login_user = {me.pw_name}\n"
            f"default_internal_group = {group}\n"
        )
