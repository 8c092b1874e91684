#!/usr/bin/env bash
# Installs banger on this host: Debian packages, the three binaries in
# /usr/local/bin, the banger and banger-admin groups, /etc/banger/bangerd.toml (if absent) and
# the systemd unit (when systemd runs). Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh must run as root" >&2; exit 2; }
./scripts/deps.sh
./scripts/build.sh bin
install -m 0755 bin/banger bin/bangerd bin/banger-vmm-qemu /usr/local/bin/
install -d -m 0755 /usr/local/share/doc/banger
install -m 0644 README.md /usr/local/share/doc/banger/README.md
# Members of the banger group may use the daemon's socket: their own VMs
# and images, and root's images. Members of banger-admin (who need banger
# too, to reach the socket) are root-equivalent: everyone's VMs and
# images, kernel builds, no per-user limits.
getent group banger >/dev/null || groupadd --system banger
getent group banger-admin >/dev/null || groupadd --system banger-admin
install -d -m 0755 /etc/banger
if [ ! -e /etc/banger/bangerd.toml ]; then
  install -m 0644 packaging/bangerd.toml /etc/banger/bangerd.toml
fi
if [ -d /run/systemd/system ]; then
  install -m 0644 packaging/bangerd.service /etc/systemd/system/bangerd.service
  systemctl daemon-reload
  echo "install: start the daemon with: systemctl enable --now bangerd"
else
  echo "install: no systemd here; run bangerd in the foreground or background yourself (scripts/quickstart.sh does)"
fi
echo "install: done. Add users to the banger group: usermod -aG banger USER"
echo "install: administrators (root-equivalent) also to banger-admin: usermod -aG banger,banger-admin USER"
