# Sourced by the scripts that fetch Debian packages the host does not carry in its own apt sources
# (deb-src entries, bookworm-backports). private_apt DIR TYPE SUITE... writes DIR/parts/debian.sources
# (deb.debian.org, component main, TYPE "deb" or "deb-src"; a suite ending in -security is served from
# debian-security), sets the array apt_opts so that apt-get and apt-cache read only DIR (sources, lists,
# cache; no preferences, no lock), and runs apt-get update. The host's apt sources, lists and pinning
# are left untouched.
private_apt() {
  local dir="$1" type="$2" s
  shift 2
  local main=() security=()
  for s in "$@"; do
    if [[ "$s" == *-security ]]; then security+=("$s"); else main+=("$s"); fi
  done
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/parts"
  rm -f "$dir/parts/"*.sources
  {
    local uri suites
    for uri in debian debian-security; do
      if [[ "$uri" == debian ]]; then suites="${main[*]}"; else suites="${security[*]}"; fi
      [[ -n "$suites" ]] || continue
      printf 'Types: %s\nURIs: http://deb.debian.org/%s\nSuites: %s\nComponents: main\n' "$type" "$uri" "$suites"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
    done
  } >"$dir/parts/debian.sources"
  apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/parts"
            -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
            -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
            -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -qq
}
