#!/usr/bin/env bash
# The console's browser tests drive a real headless Chromium. Playwright's own
# browser download is not used: the distribution's Chromium is, found on PATH
# or named by DCP_TEST_CHROMIUM. Where none is installed and this runs as root
# on Debian or Ubuntu, it is installed from the distribution's packages.
set -euo pipefail

if [ -n "${DCP_TEST_CHROMIUM:-}" ]; then
  [ -x "$DCP_TEST_CHROMIUM" ] && exit 0
  echo "DCP_TEST_CHROMIUM=$DCP_TEST_CHROMIUM is not an executable" >&2
  exit 1
fi
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium for the console's browser tests (apt-get install chromium)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
cat >&2 <<'MESSAGE'
The console's browser tests need Chromium or Chrome. Install it, e.g.
  sudo apt-get install chromium        (Debian, Ubuntu)
or set DCP_TEST_CHROMIUM to the browser's binary, then run `make test` again.
MESSAGE
exit 1
