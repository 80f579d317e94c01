#!/usr/bin/env bash
# Installs Podman's Quadlet generator (5.4.2, from Debian 13's podman package) as
# /usr/local/libexec/podman/quadlet without touching the system's apt sources.
# Debian 12's own Podman (4.3.1) has no Quadlet; the trixie binary needs only libc.
set -euo pipefail
dest=${QUADLET_DEST:-/usr/local/libexec/podman/quadlet}
if [ -x "$dest" ]; then echo "quadlet already at $dest"; exit 0; fi
for p in /usr/libexec/podman/quadlet /usr/lib/podman/quadlet /var/cache/sdsandbox/quadlet; do
  if [ -x "$p" ] && "$p" -version >/dev/null 2>&1; then
    mkdir -p "$(dirname "$dest")"; cp "$p" "$dest"; echo "quadlet copied from $p"; exit 0
  fi
done
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
uri=${uri:-http://deb.debian.org/debian}
echo "deb $uri trixie main" > "$d/sources.list"
o=(-o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=/dev/null
   -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
apt-get "${o[@]}" update >/dev/null
(cd "$d" && apt-get "${o[@]}" download podman >/dev/null)
dpkg -x "$d"/podman_*.deb "$d/x"
mkdir -p "$(dirname "$dest")"
install -m 0755 "$d/x/usr/libexec/podman/quadlet" "$dest"
echo "quadlet $("$dest" -version) installed at $dest"
