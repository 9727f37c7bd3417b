#!/usr/bin/env bash
# Xen 4.17's own user-space tools, for the tests that compare the project with them.
#
#   bash scripts/xen-tools.sh            # fetch + unpack + build the shim, print `export` lines
#   eval "$(bash scripts/xen-tools.sh)"  # use them in this shell
#
# Debian bookworm's Xen 4.17 packages are fetched with `apt-get download` (no root needed, nothing
# is installed) and unpacked with `dpkg -x` into a cache inside the project that git ignores:
#
#   .cache/xen-tools/debs/        the .deb files
#   .cache/xen-tools/root/        their contents: the XEN_ROOT of the tests
#   .cache/xen-tools/xenshim.so   scripts/xenshim.c built: a stand-in hypervisor for the daemons
#
# XEN_TOOLS_CACHE moves the cache. Once cached it works offline and does nothing more than print
# the environment. On failure (no apt-get, no network, no gcc) it prints one line saying so and
# exits 1; `npm test` goes on without the tools and the tests that need them are skipped.
set -euo pipefail

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${XEN_TOOLS_CACHE:-$PROJECT/.cache/xen-tools}
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1

# The packages and why each is here. Versions are whatever bookworm has (4.17.x).
PACKAGES=(
  libxen-dev             # public headers (xen/*.h, xenctrl.h, xs_wire.h)
  xen-utils-4.17         # xenstored, oxenstored, test-xenstore, xenstore-control, verify-stream-v2
  xen-utils-common       # etc/xen/oxenstored.conf
  xenstore-utils         # xenstore-read, -write, -ls, -watch, ... (libxenstore clients)
  python3-pyxs           # a pure-Python xenstore client
  # the shared libraries the binaries above link against
  libxenstore4 libxenmisc4.17 libxencall1 libxenevtchn1 libxengnttab1 libxenforeignmemory1
  libxendevicemodel1 libxentoolcore1 libxentoollog1 libxenhypfs1 libyajl2
)

say() { [ "$QUIET" = 1 ] || echo "xen-tools: $*" >&2; }
die() {
  local then="the tests that need them will be skipped"
  [ -n "${XENSIM_REQUIRE_XEN_TOOLS:-}" ] && [ "${XENSIM_REQUIRE_XEN_TOOLS}" != 0 ] && then="the tests that need them will FAIL (XENSIM_REQUIRE_XEN_TOOLS)"
  echo "xen-tools: $*; $then" >&2
  exit 1
}

DEBS=$CACHE/debs
ROOT=$CACHE/root
SHIM=$CACHE/xenshim.so
STAMP=$ROOT/.unpacked
mkdir -p "$DEBS"

# The list of packages and the .deb files unpacked, so that a change to either re-unpacks.
want_stamp() { printf '%s\n' "${PACKAGES[@]}"; (cd "$DEBS" && ls -1 -- *.deb 2>/dev/null || true); }

missing_debs() {
  local p
  for p in "${PACKAGES[@]}"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || echo "$p"
  done
}

# 1. download what is not cached yet
mapfile -t MISSING < <(missing_debs)
if [ "${#MISSING[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: cannot download Debian's Xen 4.17 packages"
  LOG=$CACHE/apt.log
  : >"$LOG"
  if ! apt-cache show xen-utils-4.17 >/dev/null 2>&1; then
    say "apt-get update (the package lists do not know xen-utils-4.17)"
    apt-get update >>"$LOG" 2>&1 || die "apt-get update failed (no network or no permission?); see $LOG"
    apt-cache show xen-utils-4.17 >/dev/null 2>&1 || die "no xen-utils-4.17 in the apt sources (a Debian bookworm source is needed)"
  fi
  say "downloading ${MISSING[*]}"
  # apt-get download writes into the current directory; as root it warns that the download is
  # unsandboxed, which is harmless here.
  if ! (cd "$DEBS" && apt-get download "${MISSING[@]}") >>"$LOG" 2>&1; then
    die "apt-get download failed (no network?): $(grep -E '^(E|Err):' "$LOG" | tail -n 1 || true)"
  fi
  mapfile -t MISSING < <(missing_debs)
  [ "${#MISSING[@]}" -eq 0 ] || die "apt-get download did not bring ${MISSING[*]}"
fi

# 2. unpack (again) when the set of packages or files changed
if [ ! -f "$STAMP" ] || [ "$(want_stamp)" != "$(cat "$STAMP")" ]; then
  command -v dpkg >/dev/null 2>&1 || die "dpkg not found: cannot unpack the .deb files"
  say "unpacking into $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  for deb in "$DEBS"/*.deb; do
    # a broken download is removed so that the next run fetches it again
    dpkg -x "$deb" "$ROOT" 2>>"$CACHE/dpkg.log" || { rm -f "$deb"; die "cannot unpack $(basename "$deb") (removed; run again)"; }
  done
  want_stamp >"$STAMP"
fi

# 3. the stand-in hypervisor, compiled against the unpacked headers
if [ ! -f "$SHIM" ] || [ "$PROJECT/scripts/xenshim.c" -nt "$SHIM" ] || [ "$STAMP" -nt "$SHIM" ]; then
  command -v gcc >/dev/null 2>&1 || die "gcc not found: cannot build scripts/xenshim.c (the reference xenstore daemons need it)"
  say "building $SHIM"
  gcc -O2 -Wall -Wextra -shared -fPIC -I"$ROOT/usr/include" -o "$SHIM.tmp" "$PROJECT/scripts/xenshim.c" -ldl ||
    die "building scripts/xenshim.c failed"
  mv "$SHIM.tmp" "$SHIM"
fi

LIBDIR=$ROOT/usr/lib/x86_64-linux-gnu
XENBIN=$ROOT/usr/lib/xen-4.17/bin
for b in xenstored oxenstored test-xenstore; do
  if LD_LIBRARY_PATH=$LIBDIR ldd "$XENBIN/$b" 2>/dev/null | grep -q 'not found'; then
    say "warning: $b lacks libraries: $(LD_LIBRARY_PATH=$LIBDIR ldd "$XENBIN/$b" | grep 'not found' | tr -s ' \t\n' ' ')"
  fi
done

# usr/lib/xen-4.17/bin comes first: some of usr/bin are Debian's wrapper script, which refuses to
# run on a machine that is not a Xen dom0.
cat <<EOF
export XEN_ROOT='$ROOT'
export XENSHIM='$SHIM'
export PATH='$XENBIN:$ROOT/usr/bin'\${PATH:+:\$PATH}
export LD_LIBRARY_PATH='$LIBDIR'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export PYTHONPATH='$ROOT/usr/lib/xen-4.17/lib/python:$ROOT/usr/lib/python3/dist-packages'\${PYTHONPATH:+:\$PYTHONPATH}
EOF
