#!/bin/sh
# `install-debian-package.sh PACKAGE BINARY... -- WHY`: a Debian package a test suite needs as a real server
# or browser (chromium for the console's tests, dovecot-imapd for the inbound receiver's IMAP tests),
# installed with apt when one of its BINARY paths is missing. Idempotent: nothing to do when they all
# exist. Needs root (or sudo) and apt; elsewhere it says what to install.
set -eu
PACKAGE=$1
shift
missing=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    [ -x "$1" ] || missing="$missing $1"
    shift
done
[ "$#" -gt 0 ] && shift
WHY=${*:-tests use it}
if [ -z "$missing" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-debian-package:$missing missing and apt-get is not available; install $PACKAGE ($WHY)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "install-debian-package: installing Debian's $PACKAGE ($WHY)"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$PACKAGE"
