"""The values tree: Helm-style settings with Cilium's names and defaults."""

from ciphermesh.config.schema import MASK_KEY, POOL_KEY, SETTINGS, Kind, Setting
from ciphermesh.config.values import Values, ValuesError, load_values, parse_duration

__all__ = [
    "MASK_KEY",
    "POOL_KEY",
    "SETTINGS",
    "Kind",
    "Setting",
    "Values",
    "ValuesError",
    "load_values",
    "parse_duration",
]
