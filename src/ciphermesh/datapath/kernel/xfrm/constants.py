"""Numbers from <linux/xfrm.h> and <linux/netlink.h> that the XFRM codec speaks."""

from __future__ import annotations

import socket
from typing import Final

NETLINK_XFRM: Final = 6
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
# <asm-generic/socket.h>; Python's socket module does not name them.
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33

# Netlink message types and header flags.
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
# In NLMSG_ERROR replies: the request was not echoed; extended-ack attributes follow.
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200

NLMSGERR_ATTR_MSG: Final = 1

# XFRM message types.
XFRM_MSG_NEWSA: Final = 0x10
XFRM_MSG_DELSA: Final = 0x11
XFRM_MSG_GETSA: Final = 0x12
XFRM_MSG_NEWPOLICY: Final = 0x13
XFRM_MSG_DELPOLICY: Final = 0x14
XFRM_MSG_GETPOLICY: Final = 0x15
XFRM_MSG_UPDPOLICY: Final = 0x19
XFRM_MSG_UPDSA: Final = 0x1A
XFRM_MSG_FLUSHSA: Final = 0x1C
XFRM_MSG_FLUSHPOLICY: Final = 0x1D

STATE_MESSAGES: Final = frozenset({XFRM_MSG_NEWSA, XFRM_MSG_UPDSA})
POLICY_MESSAGES: Final = frozenset({XFRM_MSG_NEWPOLICY, XFRM_MSG_UPDPOLICY})

# XFRM attributes (enum xfrm_attr_type_t).
XFRMA_ALG_AUTH: Final = 1
XFRMA_ALG_CRYPT: Final = 2
XFRMA_TMPL: Final = 5
XFRMA_REPLAY_VAL: Final = 10
XFRMA_SRCADDR: Final = 13
XFRMA_ALG_AEAD: Final = 18
XFRMA_ALG_AUTH_TRUNC: Final = 20
XFRMA_MARK: Final = 21
XFRMA_REPLAY_ESN_VAL: Final = 23
XFRMA_ADDRESS_FILTER: Final = 26
XFRMA_SET_MARK: Final = 29
XFRMA_SET_MARK_MASK: Final = 30

# Modes (XFRM_MODE_*).
XFRM_MODE_TRANSPORT: Final = 0
XFRM_MODE_TUNNEL: Final = 1
XFRM_MODE_ROUTEOPTIMIZATION: Final = 2
XFRM_MODE_IN_TRIGGER: Final = 3
XFRM_MODE_BEET: Final = 4

# State flags (XFRM_STATE_*).
XFRM_STATE_NOECN: Final = 1
XFRM_STATE_DECAP_DSCP: Final = 2
XFRM_STATE_NOPMTUDISC: Final = 4
XFRM_STATE_WILDRECV: Final = 8
XFRM_STATE_ICMP: Final = 16
XFRM_STATE_AF_UNSPEC: Final = 32
XFRM_STATE_ALIGN4: Final = 64
XFRM_STATE_ESN: Final = 128

# Policy directions, actions and flags.
XFRM_POLICY_IN: Final = 0
XFRM_POLICY_OUT: Final = 1
XFRM_POLICY_FWD: Final = 2
XFRM_POLICY_ALLOW: Final = 0
XFRM_POLICY_BLOCK: Final = 1
XFRM_POLICY_LOCALOK: Final = 1
XFRM_POLICY_ICMP: Final = 2

IPPROTO_ESP: Final = 50
IPPROTO_AH: Final = 51
IPPROTO_COMP: Final = 108
IPSEC_PROTO_ANY: Final = 255

AF_UNSPEC: Final = int(socket.AF_UNSPEC)
AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)

# "No limit" in xfrm_lifetime_cfg byte and packet limits, as `ip xfrm` and Cilium's netlink library send.
XFRM_INF: Final = 0xFFFFFFFFFFFFFFFF
# Every algorithm allowed in a template (aalgos/ealgos/calgos), as `ip xfrm` and Cilium send.
ALL_ALGORITHMS: Final = 0xFFFFFFFF
