#!/usr/bin/env bash
# Install Debian's Chromium for the browser test when it is missing. Never fails the build: the test skips
# with a reason when no browser could be installed.
set -u
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: no apt-get; the browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  echo "installed $(/usr/bin/chromium --version 2>/dev/null)"
else
  echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
exit 0
