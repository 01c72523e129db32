#!/bin/sh
# Installs Debian's headless-capable Chromium for the report's browser test
# (tests/integration/test_report_browser.py), only when it is missing.
# Idempotent: does nothing when /usr/bin/chromium (or $CHROMIUM) exists.
set -eu

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: $CHROMIUM is missing and installing it needs root;" >&2
    echo "  run: sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "  (or set CHROMIUM=/path/to/chromium)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no apt-get here; install Chromium with your package manager" >&2
    echo "  and set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
echo "ensure-chromium: installing Debian's chromium package (one time)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
"$CHROMIUM" --version
