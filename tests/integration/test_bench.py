"""The benchmark (bench/throughput.py) runs end to end and refuses to measure failing checks.

Only a smoke run with tiny counts: no figure is asserted, only that every configuration
has its row and that arproxy's delivered messages carried passing results.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "throughput.py"


@functools.cache
def load_bench() -> ModuleType:
    """bench/throughput.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("| configuration"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_quick_bench_has_every_row_and_arproxy_results_pass() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--messages", "8", "--idle", "10"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = table_rows(run.stdout)
    bench = load_bench()
    assert set(rows) == {target.name for target in bench.TARGETS}, run.stdout
    for target in bench.TARGETS:
        verdict = rows[target.name][-1]
        if target.kind == "arproxy":
            skipped = "n/a (no server." in rows[target.name][1]
            assert skipped or verdict.endswith("all pass"), run.stdout
        else:
            assert "delivered" in verdict and "FAILED" not in verdict, run.stdout
    assert rows["arproxy 1 worker"][-1].endswith("all pass"), run.stdout


def _message(field: str) -> bytes:
    return (f"Authentication-Results: {field}\r\nFrom: alice@sender.test\r\n\r\nbody\r\n").encode()


def test_verify_refuses_failing_or_missing_results() -> None:
    bench = load_bench()
    arproxy = bench.ARPROXY_CONFIGS[0]
    passing = "example.com; iprev=pass; spf=pass; dkim=pass; dmarc=pass"
    assert bench.verify(arproxy, [_message(passing)], 1)[0]
    failing = "example.com; iprev=pass; spf=pass; dkim=fail; dmarc=pass"
    ok, verdict = bench.verify(arproxy, [_message(failing)], 1)
    assert not ok and "dkim=fail" in verdict
    missing = "example.com; iprev=pass; spf=pass; dkim=pass"
    assert not bench.verify(arproxy, [_message(missing)], 1)[0]
    forged = passing + "; dkim=pass header.d=" + bench.FORGED_DOMAIN
    assert not bench.verify(arproxy, [_message(forged)], 1)[0]
    assert not bench.verify(arproxy, [_message(passing)], 2)[0]  # one lost


def test_a_fault_in_the_server_log_fails_the_row() -> None:
    """A worker that died while the load ran (no traceback: killed by a signal), any
    ERROR line, or a traceback: the row is FAILED, the figures are not of a healthy run."""
    bench = load_bench()
    healthy = (
        "2026-11-30 10:00:00,001 INFO arproxy.supervisor[10]: worker 0 started: pid 11\n"
        "2026-11-30 10:00:00,002 INFO arproxy.pipeline[11]: id=X client=127.0.0.2 "
        "stage=downstream relayed: 250 2.0.0 Ok (no ERROR here)\n"
    )
    assert bench.log_fault(healthy) is None
    died = (
        "2026-11-30 10:00:01,000 ERROR arproxy.supervisor[10]: worker 0 (pid 11) died "
        "(signal SIGKILL): restarting in 0.5s\n"
    )
    assert bench.log_fault(healthy + died) == died.strip()
    traceback = "Traceback (most recent call last):\n  File ...\n"
    assert bench.log_fault(healthy + traceback) == "Traceback (most recent call last):"


def test_round_ratios_pair_each_round_with_the_baselines_same_round() -> None:
    """The per-round line divides each round's c=20 rate by the baseline's in that round."""
    bench = load_bench()
    sink, naive, arproxy = (
        next(t for t in bench.TARGETS if t.kind == kind) for kind in ("sink", "naive", "arproxy")
    )

    def row(target: object, rates: list[int]) -> object:
        loads = [bench.Load(rate, 1.0, [0.01] * rate) for rate in rates]
        return bench.Row(target, [bench.Round(load, load, 1.0, 0.1, 1.0) for load in loads])

    rows = [row(sink, [900, 900]), row(naive, [100, 200]), row(arproxy, [110, 180])]
    assert bench.round_ratios(rows) == f"  {arproxy.name}: 1.10 0.90"
