"""Layer arrows point down: every `ciphermesh` import in src/ follows the table below, read with `ast`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Shared helpers: leaves (like config) that any layer above the cores may use. `rtnl` holds the netlink
# helpers, route ownership and datapath errors that the datapath and the lab's pods and topology share.
HELPERS = ("inet", "pcap", "tshark", "unix_json", "rtnl")
# The datapath modules the agent and the lab may import: the datapath's face and its desired state.
DATAPATH_FACE: tuple[str, ...] = ("datapath.face", "datapath.desired")

# unit -> what it may import besides itself. A unit is a package under src/ciphermesh or a top-level
# module (the package's own __init__ is the unit ""); an entry allows that unit or module and every
# module under it. A new unit has to be given its row here.
ARROWS: dict[str, tuple[str, ...]] = {
    "": (),
    "__main__": ("cli",),
    "cli": (
        "",  # __version__
        "bench",
        "lab",
        "install",
        "operator",
        "agent",
        "datapath",
        "store",
        "config",
        "keys",
        "esp",
        "wireguard",
        *HELPERS,
    ),
    "demo": ("keys", "esp", *HELPERS),
    # The chart through helm: the values it is given, the pinned helm binary.
    "install": ("config", "store.third_party"),
    # The rotation benchmarks time a rotation by the lab store's own watches, and find its etcd's pid.
    "bench": ("lab", "store", "config", "keys", "esp", "wireguard", *HELPERS),
    "lab": (
        # The lab asks what agents hold (their status socket) and what the settings ask of a node; it
        # does not recompute what they should hold (agent.plan). The engines and their cores (esp,
        # wireguard) it reaches through the datapath.
        "agent.modes",
        "agent.status_socket",
        "operator",
        # A Kubernetes lab installs the chart when given encryption values, as the seed does by hand.
        "install",
        "store",
        "config",
        "keys",
        *DATAPATH_FACE,
        *HELPERS,
    ),
    # The agent's cores are its inputs: the key secret and the nodes' WireGuard public keys; the
    # engines' own types (wireguard.peer, esp) are the datapath's business.
    "agent": ("store", "config", "keys", "wireguard.keys", *DATAPATH_FACE, *HELPERS),
    "operator": ("store", "config", "keys", *HELPERS),
    "datapath": ("config", "keys", "esp", "wireguard", *HELPERS),
    "store": ("config", "keys", *HELPERS),
    "config": (),
    "keys": (),
    "esp": ("keys",),
    "wireguard": (),
    **{helper: () for helper in HELPERS},
}

# Imports against the arrows that are known and left for later: (importing module, imported module).
# An entry that is no longer needed fails too.
KNOWN: frozenset[tuple[str, str]] = frozenset()


def _modules(src: Path) -> Iterator[tuple[str, Path]]:
    """Every module under src/ciphermesh as (dotted name below ciphermesh, path); __init__ is its package."""
    root = src / "ciphermesh"
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path, modules: set[str]) -> Iterator[str]:
    """The ciphermesh modules `name` imports (dotted below ciphermesh; "" for the package itself)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ciphermesh":
                    yield alias.name.removeprefix("ciphermesh").removeprefix(".")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                base = ".".join(parts)
            elif (node.module or "").split(".")[0] == "ciphermesh":
                base = (node.module or "").removeprefix("ciphermesh").removeprefix(".")
            else:
                continue
            for alias in node.names:
                # `from ciphermesh.lab import netns` imports the module lab.netns, not lab.
                submodule = f"{base}.{alias.name}" if base else alias.name
                yield submodule if submodule in modules else base


def _unit(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _allowed(importer: str, target: str) -> bool:
    if _unit(importer) == _unit(target):
        return True
    return any(target == entry or target.startswith(entry + ".") for entry in ARROWS[_unit(importer)])


def violations(src: Path = SRC) -> set[tuple[str, str]]:
    """(importer, imported) for every import in src/ciphermesh that the arrows do not allow."""
    modules = dict(_modules(src))
    found = set()
    for name, path in modules.items():
        for target in _imports(name, path, set(modules)):
            if not _allowed(name, target):
                found.add((name, target))
    return found


def test_every_unit_has_its_row() -> None:
    units = {_unit(name) for name, _ in _modules(SRC)}
    assert units - ARROWS.keys() == set(), "give each new unit its row in ARROWS"
    assert ARROWS.keys() - units == set()


def test_no_import_runs_against_the_arrows() -> None:
    new = sorted(violations() - KNOWN)
    assert not new, "imports against the layer arrows:\n" + "\n".join(
        f"  ciphermesh.{a} imports ciphermesh.{b}; {_unit(a)} may import: "
        + (", ".join(ARROWS[_unit(a)]) or "nothing of ours")
        for a, b in new
    )


def test_known_violations_are_still_there() -> None:
    gone = KNOWN - violations()
    assert not gone, "fixed, so remove from KNOWN:\n" + "\n".join(f"  {a} -> {b}" for a, b in sorted(gone))


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "inet.py": "",
        "keys/__init__.py": "",
        "keys/line.py": "import ciphermesh.cli.main\n",  # a core importing the CLI
        "keys/derive.py": "def f() -> None:\n    from ..lab import netns\n",  # relative, in a function
        "keys/generate.py": "from ciphermesh.keys import line\nfrom ciphermesh import inet\n",
        "cli/__init__.py": "",
        "cli/main.py": "from ciphermesh.keys import line\nfrom ciphermesh import __version__\n",
        "lab/__init__.py": "",
        "lab/names.py": "",
        "lab/netns.py": "from . import names\nfrom ciphermesh import cli, keys\n",
    }
    for name, text in files.items():
        path = tmp_path / "ciphermesh" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert violations(tmp_path) == {
        ("keys.line", "cli.main"),
        ("keys.derive", "lab.netns"),
        ("keys.generate", "inet"),
        ("lab.netns", "cli"),
    }
