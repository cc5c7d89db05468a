#!/bin/sh
# The leaderboard's HTML page is tested in a real headless browser, Debian's chromium (tests/test_leaderboard_html.py).
# This installs it from Debian's packages when no chromium is on PATH (as root, or through sudo), and does nothing
# when one is. The README's test command runs it first; .ci/run runs that same command.
set -e
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no chromium on PATH and no apt-get here; install Chromium yourself" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo"; fi
echo "install-browser: installing Debian's chromium for the leaderboard's browser test" >&2
$as_root apt-get update -qq
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
