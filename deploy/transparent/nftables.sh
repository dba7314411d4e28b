#!/usr/bin/env bash
# The nftables equivalent of iptables.sh: a table `inet longhaul` that redirects TCP connections
# on the given ports to longhaul's transparent listener, skipping packets with longhaul's mark.
#
#   nftables.sh install --ports 80,8000-8099 [--proxy-port 15001] [--mark 0x4c48] [--gateway]
#   nftables.sh remove
#   nftables.sh print --ports ...     (show the ruleset without loading it)
set -euo pipefail

action=${1:-}; shift || true
ports="" proxy_port=15001 mark=0x4c48 gateway=0
while (($#)); do
  case $1 in
    --ports) ports=$2; shift 2 ;;
    --proxy-port) proxy_port=$2; shift 2 ;;
    --mark) mark=$2; shift 2 ;;
    --gateway) gateway=1; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

ruleset() {
  cat <<NFT
table inet longhaul {
  chain output {
    type nat hook output priority -100; policy accept;
    meta mark $mark return
    meta l4proto tcp tcp dport { ${ports//:/-} } redirect to :$proxy_port
  }
NFT
  if ((gateway)); then
    cat <<NFT
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    meta mark $mark return
    meta l4proto tcp tcp dport { ${ports//:/-} } redirect to :$proxy_port
  }
NFT
  fi
  echo "}"
}

case $action in
  install)
    [[ -n $ports ]] || { echo "install needs --ports (e.g. 80,8000-8099)" >&2; exit 2; }
    nft delete table inet longhaul 2>/dev/null || true
    ruleset | nft -f -
    echo "longhaul: redirecting tcp ports $ports to :$proxy_port (mark $mark excluded)"
    ;;
  remove)
    nft delete table inet longhaul 2>/dev/null || true
    echo "longhaul: table inet longhaul removed"
    ;;
  print)
    [[ -n $ports ]] || { echo "print needs --ports" >&2; exit 2; }
    ruleset
    ;;
  *) echo "usage: $0 install --ports LIST [--proxy-port N] [--mark M] [--gateway] | remove | print --ports LIST" >&2; exit 2 ;;
esac
