"""The seams hold in the import graph: no import circle, and the border never imports the
mail-client side.

`arproxy.client` (the AUTHSERV probe and the trusted-results reader) is for the readers of
the mail. The border (session, pipeline, checks, rewrite, relay, authres, header, ...) must
not depend on it, so only the entry points (`arproxy.cli`, `arproxy.__main__`) and the
package itself import it. Each check is first run on a small tree that breaks the rule, so
a check that could not fail would fail here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "arproxy"
IMPORT_GRAPH = REPO / "scripts" / "import-graph"
CLIENT = "arproxy.client"
ENTRY_POINTS = frozenset({"arproxy.cli", "arproxy.__main__"})
TYPE_ONLY_IMPORT = "import typing\nif typing.TYPE_CHECKING:\n    from arproxy.client import x\n"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path) -> set[str]:
    """Every module name an import statement in ``path`` names, relative ones resolved;
    imports under ``if TYPE_CHECKING:`` included (a type dependency is a dependency)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = node.module or ""
            prefix = (f"{base}.{stem}" if stem else base) if node.level else stem
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def border_modules_importing_client(root: Path) -> list[str]:
    offenders = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        if name in ENTRY_POINTS or name == CLIENT or name.startswith(CLIENT + "."):
            continue
        if any(
            imported == CLIENT or imported.startswith(CLIENT + ".")
            for imported in imported_names(path, root)
        ):
            offenders.append(name)
    return offenders


def import_circles(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(IMPORT_GRAPH), "--cycles", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_tree(root: Path, files: dict[str, str]) -> Path:
    package = root / "arproxy"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_there_is_no_import_circle() -> None:
    completed = import_circles(SRC)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout == "no import circle\n"


def test_the_circle_check_sees_a_circle(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "authres/__init__.py": "from arproxy.rewrite import x\n",
            "rewrite.py": "from .authres import y\n",
        },
    )
    completed = import_circles(root)
    assert completed.returncode == 1
    assert "import circle: arproxy.authres <-> arproxy.rewrite" in completed.stdout


def test_no_border_module_imports_the_client_side() -> None:
    assert (SRC / "client" / "__init__.py").is_file()
    assert border_modules_importing_client(SRC) == []


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("server.py", "import arproxy.client\n"),
        ("pipeline.py", "from arproxy.client.trusted import trusted_results\n"),
        ("rewrite.py", "from arproxy import client\n"),
        ("relay.py", "from .client import probe\n"),
        ("checks/dmarc.py", "from ..client.model import ProbeResult\n"),
        ("authres/parser.py", "from ..client import trusted_results\n"),
        ("header.py", TYPE_ONLY_IMPORT),
    ],
)
def test_the_border_check_sees_each_way_of_importing(
    tmp_path: Path, module: str, text: str
) -> None:
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "from arproxy.client import probe\n",
            "client/__init__.py": "from .trusted import trusted_results\n",
            "client/trusted.py": "from ..authres import parse\nfrom arproxy.header import x\n",
            "checks/__init__.py": "",
            "authres/__init__.py": "from .parser import parse\n",
            module: text,
        },
    )
    expected = module.removesuffix(".py").replace("/", ".")
    assert border_modules_importing_client(root) == [f"arproxy.{expected}"]


@pytest.mark.parametrize("module", ["server.py", "smtpd.py", "admission.py"])
def test_the_smtp_glue_imports_no_check(module: str) -> None:
    """The server drives the pipeline's Session, which owns the checks (issue: seam 1)."""
    names = imported_names(SRC / module, SRC)
    assert not [name for name in names if name.startswith("arproxy.checks")], names
