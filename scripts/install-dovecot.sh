#!/bin/sh
# The IMAP server the inbound receiver's tests poll (tests/servers/imap.py): Debian's dovecot-imapd, started
# by the tests on a free 127.0.0.1 port with a generated config and a Maildir (the system service is not
# used). Idempotent: does nothing when the binary exists. Needs root (or sudo) and apt; elsewhere it says
# what to install.
set -eu
DOVECOT=${DOVECOT:-/usr/sbin/dovecot}
if [ -x "$DOVECOT" ] && [ -x /usr/lib/dovecot/imap ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-dovecot: $DOVECOT is missing and apt-get is not available; install dovecot-imapd and set DOVECOT" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "install-dovecot: installing Debian's dovecot-imapd (the inbound receiver's IMAP tests use it)"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends dovecot-imapd
