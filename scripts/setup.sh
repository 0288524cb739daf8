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
  qemu-system-x86                 # the VM harness (ciphermesh lab vm): QEMU and its C virtiofsd
  linux-image-cloud-amd64         # the guest kernel: ESP, xfrm_user, WireGuard, VXLAN, virtio-fs modules
)
# The kernel package needs an initramfs tool. Where none is installed (a container), tiny-initramfs: unlike
# initramfs-tools it pulls in no udev (nor a systemd upgrade) and its hook works without a root device.
# It conflicts with initramfs-tools and dracut, so a machine that has one keeps it.
if ! dpkg-query -W -f='${db:Status-Abbrev} ${Provides}\n' 2>/dev/null | grep -q '^ii .*linux-initramfs-tool'; then
  PACKAGES+=(tiny-initramfs)
fi

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

# The VM's static busybox: the Debian package conflicts with the installed busybox, so it is unpacked into
# a cache outside the checkout instead (ciphermesh.lab.vm.host looks there).
vm_cache=/var/cache/ciphermesh/vm
if [ ! -x "$vm_cache/busybox/bin/busybox" ]; then
  mkdir -p "$vm_cache"
  download=$(mktemp -d)
  (cd "$download" && { apt-get download -qq busybox-static 2>/dev/null || { apt-get update -qq && apt-get download -qq busybox-static; }; })
  rm -rf "$vm_cache/busybox.tmp"
  dpkg -x "$download"/busybox-static_*.deb "$vm_cache/busybox.tmp"
  rm -rf "$vm_cache/busybox"
  mv "$vm_cache/busybox.tmp" "$vm_cache/busybox"
  rm -rf "$download"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# kube-apiserver, kubectl, etcd, helm, wireguard-go at pinned releases, built once per machine and pin.
bash scripts/third-party.sh
echo "setup done: .venv/bin/ciphermesh $(.venv/bin/ciphermesh --version)"
