#!/usr/bin/env bash
# Make sure a Chromium for the browser tests (docs site, JupyterLab widgets) is on this machine.
# Playwright (a dev requirement) drives it; `playwright install` cannot download browsers here,
# so we use Debian's chromium. Idempotent: a no-op when chromium is already installed.
set -u
for b in "${SOFT_SAMPLER_CHROMIUM:-}" chromium chromium-browser; do
  if [ -n "$b" ] && command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests (apt-get, ~30 s)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0
fi
echo "WARNING: no chromium found and it could not be installed; the browser tests will fail." >&2
echo "  Install it (Debian/Ubuntu: sudo apt-get install chromium) or set SOFT_SAMPLER_CHROMIUM=/path/to/chrome." >&2
exit 0
