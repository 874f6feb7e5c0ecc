#!/usr/bin/env bash
# Install Debian's Chromium (/usr/bin/chromium) for the browser test when it is missing.
# Never fails the build: when no browser can be installed, tests/app_ui/test_browser.py skips with a reason.
# No browser is downloaded from anywhere but the distribution's own apt repositories.
set -u

CHROMIUM=/usr/bin/chromium

warn() { echo "install-browser: warning: $*; the browser test will be skipped" >&2; exit 0; }

if [ -x "$CHROMIUM" ]; then
  echo "install-browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) already present"
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || warn "no apt-get on this machine"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || warn "not root and no sudo"
  SUDO=(sudo -n)  # never prompt for a password in CI
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -qq -o Dpkg::Use-Pty=0 --no-install-recommends)
echo "install-browser: installing chromium with apt-get"
${SUDO[@]+"${SUDO[@]}"} apt-get update -qq >/dev/null 2>&1 || warn "apt-get update failed"
${SUDO[@]+"${SUDO[@]}"} apt-get install "${APT_OPTS[@]}" chromium >/dev/null 2>&1 || warn "apt-get install chromium failed"
[ -x "$CHROMIUM" ] || warn "chromium was installed but $CHROMIUM is missing"
echo "install-browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed"
exit 0
