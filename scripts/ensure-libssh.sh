#!/usr/bin/env bash
# The SSH front links libssh through pkg-config: installs libssh-dev and pkg-config when missing.
# Used by scripts/test.sh and scripts/serve-local.sh.
set -euo pipefail
if pkg-config --exists libssh 2>/dev/null; then exit 0; fi
printf '\n==> %s\n' "installing libssh-dev and pkg-config (the SSH front's library)"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libssh-dev pkg-config
