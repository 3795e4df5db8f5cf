#!/usr/bin/env bash
# Builds the release binary: `ifcvf` for linux-x64 as one NativeAOT executable (no .NET SDK or runtime
# needed where it runs; it links only glibc, libm and zlib, which `ldd` lists).
# Usage: scripts/publish.sh [OUT_DIR]      (default artifacts/publish/linux-x64)
# Writes OUT_DIR/ifcvf and prints its path on the last line. The sources are copied to a scratch
# directory first, so a build running in the working tree at the same time is never disturbed, and the
# step is skipped when OUT_DIR/ifcvf is newer than every source and build file (IFCVF_PUBLISH_FORCE=1
# rebuilds). Needs a C toolchain and zlib1g-dev for the native link; as root it installs them when missing.
# The version printed by `ifcvf --version` carries the git commit of the tree (with +dirty when changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/artifacts/publish/linux-x64}"
bin="$out/ifcvf"
log() { echo "publish: $*" >&2; }
mkdir -p "$out"

inputs=(src Directory.Build.props Directory.Packages.props global.json .editorconfig)
newer="$(cd "$root" && find "${inputs[@]}" \( -name bin -o -name obj \) -prune -o -type f -newer "$bin" -print -quit 2>/dev/null || true)"
if [[ -x "$bin" && -z "$newer" && "${IFCVF_PUBLISH_FORCE:-0}" != 1 ]]; then
  echo "$bin"
  exit 0
fi

# Native link prerequisites (NativeAOT calls the system linker through clang or gcc, and links zlib).
installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]; }
missing=()
command -v clang >/dev/null || command -v gcc >/dev/null || missing+=(gcc)
installed zlib1g-dev || missing+=(zlib1g-dev)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing ${missing[*]} for the NativeAOT link: apt-get install ${missing[*]}"
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [[ "$commit" != unknown && -n "$(git -C "$root" status --porcelain -- "${inputs[@]}" 2>/dev/null)" ]]; then
  commit="$commit.dirty"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$root" && tar --exclude=bin --exclude=obj -cf - "${inputs[@]}") | tar -C "$work" -xf -
log "dotnet publish src/Cli (NativeAOT, linux-x64, commit $commit)"
if ! (cd "$work" && dotnet publish src/Cli/Cli.csproj -c Release -r linux-x64 -p:PublishAot=true \
        -p:SourceRevisionId="$commit" -o "$work/out" --nologo -v quiet >"$work/publish.log" 2>&1); then
  cat "$work/publish.log" >&2
  exit 1
fi
cp "$work/out/ifcvf" "$bin.tmp"
mv "$bin.tmp" "$bin"
log "$bin ($(stat -c %s "$bin") bytes)"
echo "$bin"
