"""Nothing is created at import time (the worker's resources are built by `serve`).

Each arproxy module is imported in a fresh interpreter that records, before the import,
every thread pool, public suffix list, password hasher and OS random source constructed,
every thread started, and pyspf's module-level `DNSLookup`. Importing must leave all of it
as it was: what a worker process needs is made inside its event loop
(arproxy.resources), so N worker processes never share, or silently duplicate, hidden
state.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import arproxy

SRC = Path(arproxy.__file__).resolve().parent

PROBE = r"""
import concurrent.futures, json, random, sys, threading
import argon2, publicsuffixlist, spf

made = []

def recording(cls):
    original = cls.__init__
    def init(self, *args, **kwargs):
        # Only arproxy's own: libraries may make theirs (secrets, dnspython's entropy).
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] == "arproxy":
            made.append(f"{cls.__name__} in {caller}")
        original(self, *args, **kwargs)
    cls.__init__ = init

for cls in (
    concurrent.futures.ThreadPoolExecutor,
    concurrent.futures.ProcessPoolExecutor,
    publicsuffixlist.PublicSuffixList,
    argon2.PasswordHasher,
    random.SystemRandom,
):
    recording(cls)

lookup = spf.DNSLookup
threads = {t.ident for t in threading.enumerate()}
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({
    "made": made,
    "new_threads": [t.name for t in threading.enumerate() if t.ident not in threads],
    "dns_lookup_replaced": spf.DNSLookup is not lookup,
}))
"""


def all_modules() -> list[str]:
    """Every module of the package; not `__main__`, whose import runs the command line."""
    found = pkgutil.walk_packages([str(SRC)], prefix="arproxy.")
    return ["arproxy", *sorted(i.name for i in found if not i.name.endswith("__main__"))]


def test_every_module_is_found() -> None:
    modules = all_modules()
    assert "arproxy.checks.spf.bridge" in modules
    assert "arproxy.checks.dmarc.discovery" in modules
    assert "arproxy.users" in modules


def test_importing_arproxy_creates_nothing() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *all_modules()],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"made": [], "new_threads": [], "dns_lookup_replaced": False}


def test_no_module_keeps_process_global_mutable_state() -> None:
    """A `global` statement is module state changed at run time (the Maildir counter
    was one): such state belongs to an object the worker owns."""
    offenders = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Global)
    ]
    assert offenders == []
