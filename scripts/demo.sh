#!/usr/bin/env bash
# The main job: Cilium's transparent-encryption lab, its commands as written, on a Kubernetes cluster on
# this machine (a real kube-apiserver; `ciphermesh lab` plays the nodes and their kubelet). Every step
# prints what a user should see; the script fails at the first step that does not work.
set -euo pipefail
cd "$(dirname "$0")/.."

lab=${CIPHERMESH_DEMO_LAB:-cm}
export PATH="$PWD/.venv/bin:$PATH"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
note() { printf '\033[2m# %s\033[0m\n' "$*"; }

# A lab of the same name left by an earlier run would make `lab up` refuse; the demo starts clean.
ciphermesh lab down --lab "$lab" > /dev/null 2>&1 || true
trap 'ciphermesh lab down --lab "$lab" > /dev/null 2>&1 || true' EXIT

step ciphermesh lab up --lab "$lab" --nodes 3 --control-plane kubernetes
ciphermesh lab up --lab "$lab" --nodes 3 --control-plane kubernetes
note "etcd, kube-apiserver and three nodes with nothing installed yet, as 'kind create cluster' leaves them"
step 'eval "$(ciphermesh lab env)"'
eval "$(ciphermesh lab env --lab "$lab")"
step kubectl get nodes -o wide
kubectl get nodes -o wide

note "Cilium's IPsec lab from here on, command for command"
step 'PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))'
PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))
step 'kubectl create -n kube-system secret generic cilium-ipsec-keys --from-literal=keys="3+ rfc4106(gcm(aes)) $PSK 128"'
kubectl create -n kube-system secret generic cilium-ipsec-keys --from-literal=keys="3+ rfc4106(gcm(aes)) $PSK 128"
step "kubectl get secret -n kube-system cilium-ipsec-keys -o jsonpath='{.data}' | jq -r '.keys' | base64 --decode"
kubectl get secret -n kube-system cilium-ipsec-keys -o jsonpath='{.data}' | jq -r '.keys' | base64 --decode
echo
step ciphermesh install --set encryption.enabled=true --set encryption.type=ipsec
ciphermesh install --set encryption.enabled=true --set encryption.type=ipsec
step ciphermesh status --lab "$lab" --wait
ciphermesh status --lab "$lab" --wait
step kubectl get pods -n kube-system -o wide
kubectl get pods -n kube-system -o wide

step ciphermesh lab pod run client --lab "$lab" --node node-1
ciphermesh lab pod run client --lab "$lab" --node node-1
step ciphermesh lab pod run server --lab "$lab" --node node-2 -- python3 -m http.server 8080
ciphermesh lab pod run server --lab "$lab" --node node-2 -- python3 -m http.server 8080
server=$(ciphermesh lab pod list --lab "$lab" -o json | jq -r '.pods[] | select(.name == "server") | .ip')

capture() {  # the seed's `kubectl -n kube-system exec -ti ds/cilium -- tcpdump`: the lab runs no container to exec into
  step ciphermesh lab exec --lab "$lab" node-1 -- tcpdump -n -i cilium_vxlan -c 6 esp
  ciphermesh lab exec --lab "$lab" node-1 -- tcpdump -n -i cilium_vxlan -c 6 esp 2>/dev/null &
  local pid=$!
  sleep 1
  ciphermesh lab pod exec --lab "$lab" client -- ping -c 3 -i 0.3 "$server"
  wait "$pid"
}
note "while client pings server: every packet between the nodes is ESP between the cilium_host addresses"
capture
step ciphermesh encryption status --lab "$lab"
ciphermesh encryption status --lab "$lab"

note "key rotation, as Cilium's docs give it"
step "read KEYID ALGO PSK KEYSIZE < <(kubectl get secret -n kube-system cilium-ipsec-keys -o go-template='{{.data.keys | base64decode}}{{printf \"\\n\"}}')"
read KEYID ALGO PSK KEYSIZE < <(kubectl get secret -n kube-system cilium-ipsec-keys -o go-template='{{.data.keys | base64decode}}{{printf "\n"}}')
step 'if [[ $KEYID =~ "+" ]]; then KEYID=${KEYID%\+}; fi'
if [[ $KEYID =~ "+" ]]; then KEYID=${KEYID%\+}; fi
step 'NEW_PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))'
NEW_PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))
step 'data=$(echo "{\"stringData\":{\"keys\":\"$((($KEYID+1)))+ ${ALGO} ${NEW_PSK} ${KEYSIZE}\"}}")'
data=$(echo "{\"stringData\":{\"keys\":\"$((($KEYID+1)))+ ${ALGO} ${NEW_PSK} ${KEYSIZE}\"}}")
step 'kubectl patch secret -n kube-system cilium-ipsec-keys -p="${data}" -v=1'
kubectl patch secret -n kube-system cilium-ipsec-keys -p="${data}" -v=1
new=$((KEYID + 1))
note "each agent reads the mounted Secret, installs inbound SAs for key $new, publishes it, then moves traffic"
columns='NAME:.metadata.name,KEY:.spec.encryption.key'
for _ in $(seq 120); do
  [ "$(kubectl get ciliumnodes -o jsonpath='{range .items[*]}{.spec.encryption.key}{"\n"}{end}' | sort -u)" = "$new" ] && break
  sleep 0.5
done
step kubectl get ciliumnodes -o custom-columns="$columns"
kubectl get ciliumnodes -o custom-columns="$columns"
capture

step ciphermesh connectivity test --lab "$lab"
ciphermesh connectivity test --lab "$lab"

note "the same cluster with WireGuard and node-to-node encryption"
step ciphermesh uninstall
ciphermesh uninstall
step ciphermesh install --set encryption.enabled=true --set encryption.type=wireguard --set encryption.nodeEncryption=true
ciphermesh install --set encryption.enabled=true --set encryption.type=wireguard --set encryption.nodeEncryption=true
step ciphermesh status --lab "$lab" --wait
ciphermesh status --lab "$lab" --wait
note "while node-1 pings node-2's node IP: only WireGuard between the nodes (UDP 51871)"
node2_ip=$(kubectl get node node-2 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
step ciphermesh lab exec --lab "$lab" node-1 -- tcpdump -n -i eth0 -c 4 udp port 51871
ciphermesh lab exec --lab "$lab" node-1 -- tcpdump -n -i eth0 -c 4 udp port 51871 2>/dev/null &
wgcap=$!
sleep 1
ciphermesh lab exec --lab "$lab" node-1 -- ping -c 3 -i 0.3 "$node2_ip"
wait "$wgcap"
step ciphermesh connectivity test --lab "$lab"
ciphermesh connectivity test --lab "$lab"

step ciphermesh lab down --lab "$lab"
trap - EXIT
ciphermesh lab down --lab "$lab"
