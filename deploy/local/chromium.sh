#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for the admin page's browser test (Playwright
# drives it through `executable_path`; its own browser downloads are not used).
#
#   deploy/local/chromium.sh        installs the `chromium` package if missing, prints its path
#
# Idempotent. Another apt run on the machine is waited for (dpkg's lock), not failed on.
set -euo pipefail

log() { echo "chromium: $*" >&2; }

if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium package"
  export DEBIAN_FRONTEND=noninteractive
  apt_options=(-q -o DPkg::Lock::Timeout=600)
  # The package lists may be older than the chromium in the archive (security updates
  # replace it): refresh them once, then install.
  apt-get "${apt_options[@]}" update
  apt-get "${apt_options[@]}" install -y --no-install-recommends chromium fonts-dejavu-core
fi
command -v chromium
