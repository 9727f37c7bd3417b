#!/usr/bin/env bash
# Starts or stops one of Xen 4.17's xenstore daemons on this machine, with no hypervisor: the
# daemon gets scripts/xenshim.c preloaded, and everything it uses lives in DIR.
#
#   bash scripts/run-xenstored.sh c     DIR [xenstored args]    # the C xenstored
#   bash scripts/run-xenstored.sh ocaml DIR [oxenstored args]   # oxenstored
#   bash scripts/run-xenstored.sh stop  DIR
#
# Once started, DIR/socket is the daemon's socket (the tools find it through XENSTORED_PATH),
# DIR/pid its process id, DIR/xenstored.out what it printed, and DIR holds the shim's state
# (domains, ring-<domid>, port-<domid>, virq-<n>, the evtchn FIFO: see scripts/xenshim.c).
# The daemon is dom0's store: socket connections are privileged, relative paths are under
# /local/domain/0. It prints the two variables that point a client at it.
#
# The tools come from XEN_ROOT and XENSHIM, or else from the project's cache
# (bash scripts/xen-tools.sh fills it).
set -euo pipefail

usage() {
  echo "usage: $0 c|ocaml|stop DIR [daemon args]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
MODE=$1
DIR=$2
shift 2

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${XEN_TOOLS_CACHE:-$PROJECT/.cache/xen-tools}
ROOT=${XEN_ROOT:-$CACHE/root}
SHIM=${XENSHIM:-$CACHE/xenshim.so}
BIN=$ROOT/usr/lib/xen-4.17/bin

stop_daemon() {
  [ -f "$DIR/pid" ] || return 0
  local pid
  pid=$(cat "$DIR/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/pid"
}

case $MODE in
  stop)
    stop_daemon
    exit 0
    ;;
  c) EXE=$BIN/xenstored ;;
  ocaml) EXE=$BIN/oxenstored ;;
  *) usage ;;
esac

[ -x "$EXE" ] || { echo "$EXE not found: run bash scripts/xen-tools.sh (or set XEN_ROOT)" >&2; exit 1; }
[ -f "$SHIM" ] || { echo "$SHIM not found: run bash scripts/xen-tools.sh (or set XENSHIM)" >&2; exit 1; }

# A daemon that is already running in DIR goes, and so does the state it left: stale ring,
# port and FIFO files would be taken for the new daemon's.
stop_daemon
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -f "$DIR"/socket "$DIR"/socket_ro "$DIR"/ring-* "$DIR"/port-* "$DIR"/virq-* "$DIR"/evtchn "$DIR"/notify \
  "$DIR"/xsd_port "$DIR"/xenstored.out
echo 0 >"$DIR/domains"

export XS_SHIM_DIR=$DIR
export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ "$MODE" = c ]; then
  # XENSTORED_RUNDIR is where the C daemon puts its socket; -N keeps it in the foreground.
  ARGS=(-N "$@")
  export XENSTORED_RUNDIR=$DIR
else
  # oxenstored takes its settings from a file: Debian's defaults, with the pid file, the logs
  # and dom0's page and port moved into DIR. Its socket path is compiled in; the shim moves it.
  {
    grep -vE '^[[:space:]]*#?[[:space:]]*(pid-file|xenstored-log-file|access-log-file|xenstored-kva|xenstored-port)[[:space:]]*=' \
      "$ROOT/etc/xen/oxenstored.conf"
    echo "pid-file = $DIR/oxenstored.pid"
    echo "xenstored-log-file = $DIR/oxenstored.log"
    echo "access-log-file = $DIR/oxenstored-access.log"
    echo "xenstored-kva = /proc/xen/xsd_kva"
    echo "xenstored-port = /proc/xen/xsd_port"
  } >"$DIR/oxenstored.conf"
  ARGS=(--no-fork --config-file "$DIR/oxenstored.conf" "$@")
fi

LD_PRELOAD=$SHIM "$EXE" "${ARGS[@]}" </dev/null >"$DIR/xenstored.out" 2>&1 &
echo $! >"$DIR/pid"

for _ in $(seq 200); do
  [ -S "$DIR/socket" ] && break
  kill -0 "$(cat "$DIR/pid")" 2>/dev/null || break
  sleep 0.025
done
if [ ! -S "$DIR/socket" ] || ! kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
  echo "$(basename "$EXE") did not start:" >&2
  cat "$DIR/xenstored.out" >&2
  stop_daemon
  exit 1
fi
echo "$(basename "$EXE") running, pid $(cat "$DIR/pid")"
echo "export XENSTORED_PATH=$DIR/socket XS_SHIM_DIR=$DIR"
