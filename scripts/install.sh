#!/bin/sh
# lychd installer. The README's one-liner downloads this file and runs it; it never pipes a
# download into a shell itself and never calls sudo.
#
#   curl -fsSLO https://github.com/lychd/lychd/releases/latest/download/install.sh && sh install.sh
#
# It picks the binary for this machine's architecture, downloads it and its .sha256 from the
# release, verifies the checksum BEFORE installing anything, and installs to ~/.local/bin (or
# /usr/local/bin as root, or $LYCHD_INSTALL_DIR). Settings (environment, all optional):
#   LYCHD_VERSION      a release tag such as v0.1.0 (default: the latest release)
#   LYCHD_BASE_URL     where releases live (default below; for mirrors and tests)
#   LYCHD_INSTALL_DIR  the folder to install lychd into
set -eu

base=${LYCHD_BASE_URL:-https://github.com/lychd/lychd/releases}
version=${LYCHD_VERSION:-latest}

die() {
  echo "lychd install: $*" >&2
  echo "lychd install: nothing was installed." >&2
  exit 1
}

[ "$(uname -s)" = Linux ] || die "lychd runs on Linux only (this is $(uname -s))."
case "$(uname -m)" in
  x86_64 | amd64) target=x86_64-unknown-linux-gnu ;;
  aarch64 | arm64) target=aarch64-unknown-linux-gnu ;;
  *) die "no lychd build for the architecture $(uname -m) (there are x86_64 and aarch64)." ;;
esac

if [ -n "${LYCHD_INSTALL_DIR:-}" ]; then
  dir=$LYCHD_INSTALL_DIR
elif [ "$(id -u)" = 0 ]; then
  dir=/usr/local/bin
else
  dir=${HOME:?HOME is not set}/.local/bin
fi

if [ "$version" = latest ]; then
  url="$base/latest/download/lychd-$target"
else
  url="$base/download/$version/lychd-$target"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# fetch URL FILE: curl or wget; says why when it fails.
fetch() {
  if command -v curl >/dev/null 2>&1; then
    code=$(curl -sSL -o "$2" -w '%{http_code}' "$1" 2>"$tmp/err") || {
      die "could not download $1: $(cat "$tmp/err")"
    }
    [ "$code" = 200 ] || die "could not download $1: HTTP $code (is $version a release with a $target build?)"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1" 2>"$tmp/err" || die "could not download $1 (wget failed: $(cat "$tmp/err"))"
  else
    die "neither curl nor wget is installed."
  fi
}

echo "Downloading lychd ($version, $target)..."
fetch "$url" "$tmp/lychd"
fetch "$url.sha256" "$tmp/lychd.sha256"

expected=$(cut -d ' ' -f 1 <"$tmp/lychd.sha256")
case "$expected" in
  *[!0-9a-f]* | "") die "$url.sha256 is not a sha256 checksum." ;;
esac
[ ${#expected} -eq 64 ] || die "$url.sha256 is not a sha256 checksum."
if command -v sha256sum >/dev/null 2>&1; then
  actual=$(sha256sum "$tmp/lychd" | cut -d ' ' -f 1)
else
  actual=$(shasum -a 256 "$tmp/lychd" | cut -d ' ' -f 1)
fi
[ "$actual" = "$expected" ] || die "checksum mismatch for $url: expected $expected, got $actual."

mkdir -p "$dir" || die "cannot create $dir."
chmod 0755 "$tmp/lychd"
# Copy next to the target, then rename: an existing lychd is replaced in one step.
cp "$tmp/lychd" "$dir/.lychd.new" 2>/dev/null || die "cannot write to $dir (choose another with LYCHD_INSTALL_DIR)."
mv -f "$dir/.lychd.new" "$dir/lychd"

echo "Installed $("$dir/lychd" --version 2>/dev/null || echo lychd) to $dir/lychd (sha256 verified)."
case ":$PATH:" in
  *":$dir:"*) ;;
  *) echo "Note: $dir is not on your PATH; add it, e.g.: export PATH=\"$dir:\$PATH\"" ;;
esac
echo "Next: lychd doctor, then lychd init --dry-run"
