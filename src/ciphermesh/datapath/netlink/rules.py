"""Policy routing rules we own, one per route protocol number: put in place exactly, or removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ciphermesh.rtnl import netlink_op
from ciphermesh.rtnl.changes import Changes

_FR_ACT_TO_TBL = 1
_IP_PROTO_NAMES = {50: "esp"}  # as `ip rule` prints them


@dataclass(frozen=True)
class OwnedRule:
    """`ip rule add priority P [iif I] [ipproto N] [fwmark M/K] lookup T proto X`."""

    priority: int
    table: int
    proto: int
    ip_proto: int | None = None
    iifname: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None

    def describe(self) -> str:
        parts = [f"rule priority {self.priority}"]
        if self.iifname is not None:
            parts.append(f"iif {self.iifname}")
        if self.ip_proto is not None:
            parts.append(f"ipproto {_IP_PROTO_NAMES.get(self.ip_proto, self.ip_proto)}")
        if self.fwmark is not None:
            mask = self.fwmask if self.fwmask is not None else 0xFFFFFFFF
            parts.append(f"fwmark {self.fwmark:#x}/{mask:#x}")
        parts.append(f"lookup {self.table}")
        return " ".join(parts)

    def matches(self, rule: Any) -> bool:
        """Whether a dumped rule is exactly this one (a rule edited by hand is replaced)."""
        mask = rule.get_attr("FRA_FWMASK")
        # The kernel leaves out a zero mark when a mask is given.
        mark = rule.get_attr("FRA_FWMARK") or (0 if mask is not None else None)
        return (
            rule.get_attr("FRA_PRIORITY") == self.priority
            and (rule.get_attr("FRA_TABLE") or rule["table"]) == self.table
            and rule.get_attr("FRA_IP_PROTO") == self.ip_proto
            and rule.get_attr("FRA_IIFNAME") == self.iifname
            and rule["action"] == _FR_ACT_TO_TBL
            and rule["dst_len"] == 0
            and rule["src_len"] == 0
            and (mark, mask) == (self.fwmark, self.fwmask)
        )

    def add(self, ipr: Any) -> None:
        spec: dict[str, Any] = {"priority": self.priority, "table": self.table, "protocol": self.proto}
        if self.ip_proto is not None:
            spec["ip_proto"] = self.ip_proto
        if self.iifname is not None:
            spec["iifname"] = self.iifname
        if self.fwmark is not None:
            spec.update(fwmark=self.fwmark, fwmask=self.fwmask)
        with netlink_op(f"add {self.describe()}"):
            ipr.rule("add", **spec)


def _rules_of(ipr: Any, proto: int) -> list[Any]:
    return [rule for rule in ipr.rule("dump", family=2) if rule.get_attr("FRA_PROTOCOL") == proto]


def _delete(ipr: Any, rule: Any, proto: int, changes: Changes) -> None:
    priority = rule.get_attr("FRA_PRIORITY")
    with netlink_op(f"delete rule priority {priority}"):
        ipr.rule("del", priority=priority, protocol=proto)
    changes.removed.append(f"rule priority {priority} proto {proto}")


def ensure_rule(ipr: Any, wanted: OwnedRule, changes: Changes) -> None:
    """Make `wanted` the only IPv4 rule carrying its protocol number."""
    rules = _rules_of(ipr, wanted.proto)
    if len(rules) == 1 and wanted.matches(rules[0]):
        return
    for rule in rules:
        _delete(ipr, rule, wanted.proto, changes)
    wanted.add(ipr)
    changes.added.append(wanted.describe())


def remove_rules(ipr: Any, proto: int, changes: Changes) -> None:
    """Remove every IPv4 rule carrying `proto`."""
    for rule in _rules_of(ipr, proto):
        _delete(ipr, rule, proto, changes)
