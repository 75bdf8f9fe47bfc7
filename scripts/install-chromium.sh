#!/bin/sh
# The browser the console's tests drive (tests/acceptance/test_console.py): Debian's chromium, used by
# Playwright through executable_path (Playwright's own browser download is not used). Idempotent: does
# nothing when /usr/bin/chromium exists. Needs root (or sudo) and apt; elsewhere it says what to install.
set -eu
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: $CHROMIUM is missing and apt-get is not available; install Chromium and set CHROMIUM" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "install-chromium: installing Debian's chromium (the console's browser tests drive it)"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
