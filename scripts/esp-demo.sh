#!/usr/bin/env bash
# The ESP demo: a key line, per-tunnel keys for two nodes, ICMP echoes in our ESP, verified by tshark.
# Usage: scripts/esp-demo.sh [OUT_DIR]   (default: a new directory under /tmp)
# Exits non-zero unless every step works and tshark verifies the ICV of every frame.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/.venv/bin"
out=${1:-$(mktemp -d /tmp/ciphermesh-demo.XXXXXX)}
# Files here hold key material.
umask 077
mkdir -p "$out"

ciphermesh() { "$bin/ciphermesh" "$@"; }
run() { printf '\n$ %s\n' "$*"; }

node_1=10.0.1.1
node_2=10.0.2.1
boot_1=$(cat /proc/sys/kernel/random/uuid)
boot_2=$(cat /proc/sys/kernel/random/uuid)

run "ciphermesh encryption key generate > $out/keys"
ciphermesh encryption key generate > "$out/keys"
echo "a new key line, as for: kubectl create secret generic cilium-ipsec-keys --from-literal=keys=..."
echo "(kept in $out/keys, mode 0600, not shown)"

run "ciphermesh encryption key validate - < $out/keys"
ciphermesh encryption key validate - < "$out/keys"

echo
echo "node-1: router IP $node_1, boot ID $boot_1"
echo "node-2: router IP $node_2, boot ID $boot_2"
: > "$out/esp_sa.cli"
for direction in "$node_1 $node_2 $boot_1 $boot_2" "$node_2 $node_1 $boot_2 $boot_1"; do
    read -r src dst src_boot dst_boot <<< "$direction"
    run "ciphermesh encryption key derive - --src $src --dst $dst --src-boot-id $src_boot" \
        "--dst-boot-id $dst_boot -o wireshark < $out/keys >> $out/esp_sa.cli"
    ciphermesh encryption key derive - --src "$src" --dst "$dst" --src-boot-id "$src_boot" \
        --dst-boot-id "$dst_boot" -o wireshark < "$out/keys" >> "$out/esp_sa.cli"
done
echo "the per-tunnel key of each direction as a tshark esp_sa record (in $out/esp_sa.cli, not shown)"

run "python -m ciphermesh.demo --out $out --key-file $out/keys --boot-id-a $boot_1 --boot-id-b $boot_2" \
    "--esp-sa-file $out/esp_sa.cli"
"$bin/python" -m ciphermesh.demo --out "$out" --key-file "$out/keys" \
    --boot-id-a "$boot_1" --boot-id-b "$boot_2" --esp-sa-file "$out/esp_sa.cli"

echo
echo "Look at it yourself (-V shows each frame in full):"
echo "  tshark -r $out/esp-demo.pcap -o esp.enable_encryption_decode:TRUE -o esp.enable_authentication_check:TRUE \\"
echo "    -o \"uat:esp_sa:\$(sed -n 1p $out/esp_sa.txt)\" -o \"uat:esp_sa:\$(sed -n 2p $out/esp_sa.txt)\""
