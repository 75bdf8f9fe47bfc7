"""A real IMAP server for the inbound receiver's tests: Debian's dovecot (dovecot-imapd, installed by
scripts/install-debian-package.sh from `make`), started in the foreground on a free 127.0.0.1 port with a
generated config, one user and a Maildir under a directory of its own; stopped (and its files removed)
on exit. Tests put mail in with IMAP APPEND (the standard library's imaplib), as a delivery would.

    with DovecotImapServer() as imap:
        imap.append(b"From: ...")      # into INBOX
        imap.host, imap.port, imap.user, imap.password
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOVECOT = os.environ.get("DOVECOT", "/usr/sbin/dovecot")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DovecotImapServer:
    def __init__(
        self, user: str = "replies", password: str = "secret-for-tests", *, idle: bool = True
    ) -> None:
        self.idle = idle  # False: the server does not announce IDLE (clients must poll)
        self.host = "127.0.0.1"
        self.port = 0
        self.user = user
        self.password = password
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DovecotImapServer:
        if not os.access(DOVECOT, os.X_OK):
            raise RuntimeError(f"{DOVECOT} is missing: install dovecot-imapd (make does)")
        # Dovecot refuses mail processes as root, so as root the mail belongs to `nobody`; its directory
        # lives outside pytest's root-only tmp tree so that user can reach it.
        self._dir = Path(tempfile.mkdtemp(prefix="enrollstream-imap-"))
        self._dir.chmod(0o755)
        if os.getuid() == 0:
            mail_user = pwd.getpwnam("nobody")
            login_user = "dovenull"
            internal_user = "dovecot"
        else:
            mail_user = pwd.getpwuid(os.getuid())
            login_user = internal_user = mail_user.pw_name
        home = self._dir / "home"
        home.mkdir()
        os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        (self._dir / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}\n")
        self.port = _free_port()
        config = self._dir / "dovecot.conf"
        config.write_text(
            f"""
base_dir = {self._dir}/run
state_dir = {self._dir}/state
log_path = {self._dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {mail_user.pw_uid}
last_valid_uid = {mail_user.pw_uid}
mail_location = maildir:~/Maildir
{"" if self.idle else "imap_capability = IMAP4rev1 LITERAL+ UIDPLUS"}
passdb {{
  driver = passwd-file
  args = {self._dir}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={home}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
        )
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                self._cleanup()
                raise RuntimeError(f"dovecot exited: {err} {self._log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5):
                break
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"dovecot did not listen on {self.port} within 20s: {self._log()}")
            time.sleep(0.05)
        return self

    def _log(self) -> str:
        assert self._dir is not None
        log = self._dir / "dovecot.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def client(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        conn.login(self.user, self.password)
        return conn

    def append(self, message: bytes, mailbox: str = "INBOX") -> None:
        conn = self.client()
        try:
            if mailbox != "INBOX":
                conn.create(mailbox)  # NO when it exists already: fine
            status, data = conn.append(mailbox, None, None, message)
            assert status == "OK", data
        finally:
            conn.logout()

    def recreate(self, mailbox: str) -> None:
        """Delete the mailbox and create it again, empty: the server gives it a new UIDVALIDITY."""
        assert mailbox != "INBOX"
        conn = self.client()
        try:
            status, data = conn.delete(mailbox)
            assert status == "OK", data
            status, data = conn.create(mailbox)
            assert status == "OK", data
        finally:
            conn.logout()

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        conn = self.client()
        try:
            conn.select(mailbox, readonly=True)
            _, [value] = conn.response("UIDVALIDITY")
            assert isinstance(value, bytes)
            return int(value)
        finally:
            conn.logout()
