"""The settings ciphermesh knows: Cilium's Helm names and defaults, plus ciphermesh's own additions."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """How a setting's text is read and checked."""

    BOOL = "bool"
    INT = "int"
    STR = "str"
    CHOICE = "choice"
    DURATION = "duration"
    CIDR = "cidr"
    CIDR_LIST = "cidr list"


@dataclass(frozen=True)
class Setting:
    """One leaf of the values tree."""

    path: str
    kind: Kind
    default: object
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    allow_empty: bool = False


# The IPAM pool's two settings, read by name in the agent, the operator and the lab.
POOL_KEY = "ipam.operator.clusterPoolIPv4PodCIDRList"
MASK_KEY = "ipam.operator.clusterPoolIPv4MaskSize"
IMAGE_REPOSITORY = "ghcr.io/ciphermesh/ciphermesh"
# The package version, repeated because config imports nothing of ours; a test keeps them equal.
IMAGE_TAG = "0.1.0"

SETTINGS: tuple[Setting, ...] = (
    Setting("encryption.enabled", Kind.BOOL, False, "Encrypt traffic between nodes."),
    Setting(
        "encryption.type", Kind.CHOICE, "ipsec", "Encryption protocol.", choices=("ipsec", "wireguard")
    ),
    Setting(
        "encryption.nodeEncryption",
        Kind.BOOL,
        False,
        "Encrypt node-to-node (host) traffic too; ciphermesh supports it with IPsec and WireGuard.",
    ),
    Setting(
        "encryption.engine",
        Kind.CHOICE,
        "auto",
        "Who encrypts: the kernel (XFRM, WireGuard module), userspace (TUN), or auto (the kernel where it "
        "has ESP / WireGuard). A ciphermesh addition.",
        choices=("auto", "kernel", "userspace"),
    ),
    Setting(
        "encryption.strictMode.enabled",
        Kind.BOOL,
        False,
        "Drop pod traffic between nodes that cannot be encrypted instead of sending it in plaintext.",
    ),
    Setting(
        "encryption.strictMode.cidr",
        Kind.CIDR,
        "",
        "The pod CIDR strict mode protects (empty: all pod CIDRs of the pool).",
        allow_empty=True,
    ),
    Setting(
        "encryption.strictMode.allowRemoteNodeIdentities",
        Kind.BOOL,
        False,
        "Let unencrypted traffic to remote node IPs through in strict mode.",
    ),
    Setting(
        "encryption.ipsec.secretName",
        Kind.STR,
        "cilium-ipsec-keys",
        "Name of the Secret (in kube-system) whose `keys` field holds the IPsec key line.",
    ),
    Setting("encryption.ipsec.keyFile", Kind.STR, "keys", "Field of the Secret that holds the key line."),
    Setting("encryption.ipsec.mountPath", Kind.STR, "/etc/ipsec", "Where the Secret is mounted on a node."),
    Setting(
        "encryption.ipsec.interface",
        Kind.STR,
        "",
        "Interface that carries encrypted traffic (empty: detected).",
        allow_empty=True,
    ),
    Setting("encryption.ipsec.keyWatcher", Kind.BOOL, True, "Reload the key when the Secret changes."),
    Setting(
        "encryption.ipsec.keyRotationDuration",
        Kind.DURATION,
        "5m",
        "How long the previous key stays accepted after a rotation.",
    ),
    Setting(
        "encryption.ipsec.autoRotateInterval",
        Kind.DURATION,
        "0s",
        "Rotate the key on this schedule (0s: off). A ciphermesh addition (Cilium issue #7304).",
    ),
    Setting(
        "encryption.wireguard.persistentKeepalive",
        Kind.DURATION,
        "0s",
        "WireGuard persistent keepalive interval (0s: off).",
    ),
    Setting(
        "ipam.mode",
        Kind.CHOICE,
        "cluster-pool",
        "IP address management mode; ciphermesh implements cluster-pool.",
        choices=("cluster-pool",),
    ),
    Setting(
        POOL_KEY,
        Kind.CIDR_LIST,
        ("10.0.0.0/8",),
        "Pools the operator carves node pod CIDRs from, used in order.",
    ),
    Setting(
        MASK_KEY,
        Kind.INT,
        24,
        "Prefix length of each node's pod CIDR.",
        minimum=8,
        maximum=30,
    ),
    Setting(
        "tunnelProtocol", Kind.CHOICE, "vxlan", "Overlay between nodes; ciphermesh implements VXLAN.",
        choices=("vxlan",),
    ),
    Setting("MTU", Kind.INT, 0, "Device MTU (0: detected from the node's eth0).", minimum=0, maximum=65535),
    # The chart's own: how the agent and operator run on Kubernetes (not in the cilium-config ConfigMap).
    Setting("image.repository", Kind.STR, IMAGE_REPOSITORY, "The agent and operator image, without its tag."),
    Setting("image.tag", Kind.STR, IMAGE_TAG, "The image's tag (default: this release)."),
    Setting(
        "image.pullPolicy", Kind.CHOICE, "IfNotPresent", "When the kubelet pulls the image.",
        choices=("Always", "IfNotPresent", "Never"),
    ),
    Setting(
        "operator.replicas", Kind.INT, 2, "Operator replicas; one leads (a Lease), the rest stand by.",
        minimum=0,
    ),
)

BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}
