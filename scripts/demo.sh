#!/usr/bin/env bash
# The main job: an encrypted pod network on this machine, the flow of Cilium's IPsec lab, step by step.
# Every step prints what a user should see; the script fails at the first step that does not work.
set -euo pipefail
cd "$(dirname "$0")/.."

lab=${CIPHERMESH_DEMO_LAB:-cm}
cm() { .venv/bin/ciphermesh "$@"; }
step() { printf '\n\033[1m$ ciphermesh %s\033[0m\n' "$*"; }
note() { printf '\033[2m# %s\033[0m\n' "$*"; }

# A lab of the same name left by an earlier run would make `lab up` refuse; the demo starts clean.
cm lab down --name "$lab" > /dev/null 2>&1 || true
trap 'cm lab down --name "$lab" > /dev/null 2>&1 || true' EXIT

step lab up --name "$lab" --nodes 3 --set encryption.enabled=true --set encryption.type=ipsec
cm lab up --name "$lab" --nodes 3 --set encryption.enabled=true --set encryption.type=ipsec
note "three node namespaces on a bridge, etcd, the operator and one agent per node; every node reaches every other"

step encryption key show --lab "$lab"
cm encryption key show --lab "$lab"
note "the secret kube-system/cilium-ipsec-keys in Cilium's format; --reveal shows the key"

step lab pod run client --name "$lab" --node node-1
cm lab pod run client --name "$lab" --node node-1
step lab pod run server --name "$lab" --node node-2 -- python3 -m http.server 8080
cm lab pod run server --name "$lab" --node node-2 -- python3 -m http.server 8080
server=$(cm lab pod list --name "$lab" -o json | python3 -c 'import json,sys; print(next(p["ip"] for p in json.load(sys.stdin)["pods"] if p["name"] == "server"))')

step lab exec --name "$lab" node-1 -- tcpdump -n -i cilium_vxlan -c 6 esp
note "while client pings server: every packet between the nodes is ESP between the cilium_host addresses"
cm lab exec --name "$lab" node-1 -- tcpdump -n -i cilium_vxlan -c 6 esp 2>/dev/null &
capture=$!
sleep 1
cm lab pod exec --name "$lab" client -- ping -c 3 -i 0.3 "$server"
wait "$capture"

step lab pod exec --name "$lab" client -- curl -s -o /dev/null -w '%{http_code}\n' "http://$server:8080/"
cm lab pod exec --name "$lab" client -- curl -s -o /dev/null -w '%{http_code}\n' "http://$server:8080/"

step status --lab "$lab"
cm status --lab "$lab"

step encryption status --lab "$lab"
cm encryption status --lab "$lab"

step encryption key rotate --lab "$lab"
cm encryption key rotate --lab "$lab"
note "new inbound SAs first, then each node publishes key 4, then traffic moves to SPI 4 pair by pair"
sleep 3
cm lab pod exec --name "$lab" client -- ping -c 3 -i 0.3 "$server"
cm encryption status --lab "$lab"

step connectivity test --lab "$lab"
cm connectivity test --lab "$lab"

step lab down --name "$lab"
trap - EXIT
cm lab down --name "$lab"

# The second install line of Cilium's docs, plus strict mode: WireGuard, host traffic encrypted too.
wg="${lab}wg"
cm lab down --name "$wg" > /dev/null 2>&1 || true
trap 'cm lab down --name "$wg" > /dev/null 2>&1 || true' EXIT
step lab up --name "$wg" --nodes 2 --set encryption.enabled=true --set encryption.type=wireguard \
    --set encryption.nodeEncryption=true --set encryption.strictMode.enabled=true
cm lab up --name "$wg" --nodes 2 --set encryption.enabled=true --set encryption.type=wireguard \
    --set encryption.nodeEncryption=true --set encryption.strictMode.enabled=true
note "cilium_wg0 on UDP 51871 per node; host traffic to peers' node IPs goes through it; an nftables guard drops unencrypted pod traffic"

step lab exec --name "$wg" node-1 -- tcpdump -n -i eth0 -c 4 udp port 51871
note "while node-1 pings node-2's node IP: only WireGuard between the nodes"
cm lab exec --name "$wg" node-1 -- tcpdump -n -i eth0 -c 4 udp port 51871 2>/dev/null &
capture=$!
sleep 1
node2_ip=$(cm status --lab "$wg" -o json | python3 -c 'import json,sys; print(next(n["nodeIP"] for n in json.load(sys.stdin)["nodes"] if n["name"] == "node-2"))')
cm lab exec --name "$wg" node-1 -- ping -c 3 -i 0.3 "$node2_ip"
wait "$capture"

step connectivity test --lab "$wg"
cm connectivity test --lab "$wg"
note "pod to pod, node to node, and plaintext forced out of each node: dropped and counted, never on the wire"

step encryption status --lab "$wg"
cm encryption status --lab "$wg"

step lab down --name "$wg"
trap - EXIT
cm lab down --name "$wg"
