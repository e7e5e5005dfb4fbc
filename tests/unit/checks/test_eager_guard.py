"""The checks' first step runs under the caller's task (arproxy.checks.eager): nothing
a check runs may reach for the current task, as `asyncio.timeout` and
`asyncio.current_task` do (the timeout would cancel the session, not the check). This
test fails when such a call appears in the checks or the resolver they use."""

from __future__ import annotations

import ast
from pathlib import Path

import arproxy

SOURCE = Path(arproxy.__file__).parent
# What a check's first step may run: the checks themselves and the one resolver.
CHECKED = [*sorted((SOURCE / "checks").rglob("*.py")), SOURCE / "dns.py", SOURCE / "names.py"]
TASK_BOUND = {"timeout", "timeout_at", "current_task"}


def task_bound_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in TASK_BOUND:
            base = node.value
            if isinstance(base, ast.Name) and base.id == "asyncio":
                found.append(f"{path.name}:{node.lineno} asyncio.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "asyncio":
            found += [
                f"{path.name}:{node.lineno} from asyncio import {alias.name}"
                for alias in node.names
                if alias.name in TASK_BOUND
            ]
    return found


def test_no_check_depends_on_the_current_task() -> None:
    assert len(CHECKED) > 10
    found = [call for path in CHECKED for call in task_bound_calls(path)]
    assert found == []


def test_the_guard_sees_such_a_call(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncio\nfrom asyncio import current_task\n"
        "async def f():\n    async with asyncio.timeout(1):\n        pass\n"
    )
    assert task_bound_calls(bad) == [
        "bad.py:2 from asyncio import current_task",
        "bad.py:4 asyncio.timeout",
    ]
