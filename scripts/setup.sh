#!/usr/bin/env bash
# Sets up ciphermesh on Debian 12 as root: the Debian packages it uses, the Python environment (.venv) and
# the pinned third-party commands built with Go (scripts/third-party.sh, linked into .venv/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3 python3-venv            # the interpreter and venv, for machines without their own
  iproute2 iputils-ping procps    # namespaces, links, routes; ping; ps/pkill
  tcpdump tshark                  # captures, and the independent ESP decryptor
  etcd-server                     # the lab's control-plane store
  wireguard-go wireguard-tools    # the WireGuard peer we interoperate with
  iperf3 curl nftables iptables   # traffic and checks inside pods and nodes
  util-linux                      # flock, for the third-party build cache; unshare and setpriv for the lab kubelet
  xxd jq                          # the seed's key recipe (dd | xxd) and its read-back (jsonpath | jq)
  strace                          # what `ip xfrm` sends, compared byte for byte with the XFRM encoder
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer for it so the install never prompts.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# kube-apiserver, kubectl, etcd, helm, wireguard-go at pinned releases, built once per machine and pin.
bash scripts/third-party.sh
echo "setup done: .venv/bin/ciphermesh $(.venv/bin/ciphermesh --version)"
