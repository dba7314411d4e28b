#!/usr/bin/env bash
# Installs or removes the iptables rules that send clients' outbound TCP connections on the given
# ports to longhaul's transparent listener, skipping longhaul's own (marked) upstream sockets.
#
#   iptables.sh install --ports 80,8000:8099 [--proxy-port 15001] [--mark 0x4c48] [--owner USER]
#                       [--gateway] [--tproxy]
#   iptables.sh remove  [--tproxy]
#
# Default: REDIRECT in nat OUTPUT (clients on this host). --gateway also catches forwarded traffic
# (nat PREROUTING). --tproxy uses mangle PREROUTING TPROXY instead of REDIRECT (gateway only; set
# `tproxy = true` in [transparent]); it keeps the original destination as the socket's local address.
# --owner also skips sockets of that user (for a longhaul running without CAP_NET_ADMIN, mark = 0).
# Needs CAP_NET_ADMIN (root). Idempotent: install removes an earlier install first.
set -euo pipefail

action=${1:-}; shift || true
ports="" proxy_port=15001 mark=0x4c48 owner="" gateway=0 tproxy=0 table=100
while (($#)); do
  case $1 in
    --ports) ports=$2; shift 2 ;;
    --proxy-port) proxy_port=$2; shift 2 ;;
    --mark) mark=$2; shift 2 ;;
    --owner) owner=$2; shift 2 ;;
    --gateway) gateway=1; shift ;;
    --tproxy) tproxy=1; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
IPT=${IPTABLES:-iptables}
CHAIN=LONGHAUL

remove() {
  for hook in OUTPUT PREROUTING; do
    while $IPT -t nat -D "$hook" -p tcp -j "$CHAIN" 2>/dev/null; do :; done
  done
  $IPT -t nat -F "$CHAIN" 2>/dev/null || true
  $IPT -t nat -X "$CHAIN" 2>/dev/null || true
  while $IPT -t mangle -D PREROUTING -p tcp -j "$CHAIN" 2>/dev/null; do :; done
  $IPT -t mangle -F "$CHAIN" 2>/dev/null || true
  $IPT -t mangle -X "$CHAIN" 2>/dev/null || true
  ip rule del fwmark 0x1/0x1 lookup "$table" 2>/dev/null || true
  ip route flush table "$table" 2>/dev/null || true
}

install_redirect() {
  $IPT -t nat -N "$CHAIN"
  # longhaul's own upstream sockets carry the mark: never redirect them back to longhaul.
  $IPT -t nat -A "$CHAIN" -m mark --mark "$mark" -j RETURN
  if [[ -n $owner ]]; then $IPT -t nat -A "$CHAIN" -m owner --uid-owner "$owner" -j RETURN; fi
  $IPT -t nat -A "$CHAIN" -p tcp -m multiport --dports "$ports" -j REDIRECT --to-ports "$proxy_port"
  $IPT -t nat -A OUTPUT -p tcp -j "$CHAIN"
  if ((gateway)); then $IPT -t nat -A PREROUTING -p tcp -j "$CHAIN"; fi
}

install_tproxy() {
  $IPT -t mangle -N "$CHAIN"
  $IPT -t mangle -A "$CHAIN" -m mark --mark "$mark" -j RETURN
  $IPT -t mangle -A "$CHAIN" -p tcp -m multiport --dports "$ports" \
    -j TPROXY --on-port "$proxy_port" --tproxy-mark 0x1/0x1
  $IPT -t mangle -A PREROUTING -p tcp -j "$CHAIN"
  # Packets marked by TPROXY are delivered locally, to longhaul's IP_TRANSPARENT listener.
  ip rule add fwmark 0x1/0x1 lookup "$table"
  ip route add local 0.0.0.0/0 dev lo table "$table"
}

case $action in
  install)
    [[ -n $ports ]] || { echo "install needs --ports (e.g. 80,8000:8099)" >&2; exit 2; }
    remove
    if ((tproxy)); then install_tproxy; else install_redirect; fi
    echo "longhaul: redirecting tcp ports $ports to :$proxy_port (mark $mark excluded)"
    ;;
  remove)
    remove
    echo "longhaul: rules removed"
    ;;
  *) echo "usage: $0 install --ports LIST [--proxy-port N] [--mark M] [--gateway] [--tproxy] | remove" >&2; exit 2 ;;
esac
