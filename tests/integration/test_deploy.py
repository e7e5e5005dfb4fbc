"""What deploy/ ships, checked by the programs that will read it.

The compose file by Debian's docker-compose (`config` needs no Docker engine), the
HAProxy and Postfix configurations by haproxy -c and postconf, the systemd unit by
systemd-analyze verify; the image's health check script against a running arproxy;
`arproxy serve` with `metrics.listen` (every family after one message), `log.format =
"json"` and $NOTIFY_SOCKET (sd_notify READY=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import MakeArproxy
from .peers import SmtpSink, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HEALTHCHECK = DEPLOY / "arproxy" / "healthcheck.py"

FAMILIES = (
    "arproxy_sessions",
    "arproxy_transactions",
    "arproxy_recipients",
    "arproxy_results",
    "arproxy_check_duration_seconds",
    "arproxy_relay_duration_seconds",
    "arproxy_dns_queries",
    "arproxy_dns_lookups",
    "arproxy_dns_cache_hits",
    "arproxy_downstream_errors",
    "arproxy_forged_fields_removed",
    "arproxy_auth_failures",
    "arproxy_policy_rejections",
)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_validates() -> None:
    # scripts/test installs docker-compose: a missing one is a failure, not a skip.
    completed = run("docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_compose_topology_scales_and_pins_its_images() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    expected = {"haproxy", "arproxy", "postfix", "dovecot", "unbound", "redis", "prometheus"}
    assert expected <= set(services)
    arproxy = services["arproxy"]
    # `--scale arproxy=N` needs no fixed name and no published port.
    assert "container_name" not in arproxy and "ports" not in arproxy
    assert all(volume.endswith(":ro") for volume in arproxy["volumes"])
    assert arproxy.get("read_only") is True
    assert sorted(services["haproxy"]["ports"]) == ["25:25", "587:587"]
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and re.search(r"\d", tag) and tag != "latest", (name, image)


def test_image_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(bases) == 2 and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases)
    assert re.search(r"^USER arproxy", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*arproxy-healthcheck", text, re.MULTILINE | re.DOTALL)
    assert "pip wheel --wheel-dir /wheels ." in text  # arproxy from this repository


def test_haproxy_configuration_is_valid() -> None:
    completed = run("haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg"))
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_postfix_configuration_is_valid() -> None:
    completed = run("postconf", "-c", str(DEPLOY / "postfix"), "-n")
    assert completed.returncode == 0 and "warning" not in completed.stderr, completed.stderr
    assert "smtpd_authorized_xforward_hosts = 172.28.0.0/24" in completed.stdout


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (package systemd) is needed"
    arproxy = Path(sys.executable).with_name("arproxy")
    unit = (
        (DEPLOY / "arproxy.service").read_text().replace("/opt/arproxy/bin/arproxy", str(arproxy))
    )
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    path = tmp_path / "arproxy.service"
    path.write_text(unit)
    completed = run(analyze, "verify", str(path))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr.strip() == "", completed.stderr


def test_grafana_dashboard_shows_every_family() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "arproxy-dashboard.json").read_text())
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for family in FAMILIES:
        if family != "arproxy_recipients":  # in the transactions panel's stead
            assert family in expressions, family


def test_image_healthcheck_speaks_smtp_through_proxy_protocol(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(
        smtp_sink.url, server='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]'
    )
    healthy = run(sys.executable, str(HEALTHCHECK), "127.0.0.1", str(proxy.port))
    assert healthy.returncode == 0, healthy.stderr
    nothing = run(sys.executable, str(HEALTHCHECK), "127.0.0.1", str(free_port()))
    assert nothing.returncode == 1 and "unhealthy" in nothing.stderr


FORGED = (
    b"Authentication-Results: example.com; spf=pass smtp.mailfrom=ceo@example.com\r\n"
    b"From: Carol <carol@sender.test>\r\nTo: bob@example.com\r\nSubject: metrics\r\n"
    b"Message-ID: <metrics@sender.test>\r\n\r\nbody\r\n"
)


def one_message(port: int) -> None:
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname="mail.sender.test", source_address=("127.0.0.2", 0)
    ) as client:
        client.sendmail("carol@sender.test", ["bob@example.com"], FORGED)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text: str = response.read().decode()
    return text


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{sample} not in\n{text}"
    return float(match[1])


def test_metrics_show_every_family_after_one_message(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    proxy = make_arproxy(smtp_sink.url, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    one_message(proxy.port)
    text = scrape(port)
    for family in FAMILIES:
        assert re.search(rf"^# TYPE {family}(_total)? (counter|histogram)$", text, re.M), family
    accepted = 'arproxy_transactions_total{outcome="accepted",stage="downstream"}'
    assert value(text, accepted) == 1
    assert value(text, 'arproxy_results_total{method="spf",value="pass"}') == 1
    assert value(text, 'arproxy_results_total{method="iprev",value="pass"}') == 1
    assert value(text, 'arproxy_check_duration_seconds_count{method="spf"}') >= 1
    assert value(text, "arproxy_relay_duration_seconds_count") == 1
    assert value(text, "arproxy_forged_fields_removed_total") == 1
    assert value(text, "arproxy_dns_queries_total") > 0
    assert value(text, "arproxy_dns_lookups_total") >= value(text, "arproxy_dns_cache_hits_total")
    assert value(text, "arproxy_sessions_total") >= 2  # the readiness probe's and ours


def test_metrics_multiprocess_dir_sums_the_files(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: removed
    proxy = make_arproxy(
        smtp_sink.url,
        extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\nmultiprocess_dir = "{directory}"\n',
    )
    one_message(proxy.port)
    text = scrape(port)
    accepted = 'arproxy_transactions_total{outcome="accepted",stage="downstream"}'
    assert value(text, accepted) == 1
    assert value(text, "arproxy_forged_fields_removed_total") == 1
    assert not (directory / "counter_999999.db").exists()
    assert any(directory.glob("*.db"))


def test_json_logs_are_one_object_per_line(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, extra='[log]\nformat = "json"\n')
    one_message(proxy.port)
    proxy.stop()
    entries = [json.loads(line) for line in proxy.log.splitlines()]
    (summary,) = [e for e in entries if e.get("event") == "transaction"]
    assert summary["client"] == "127.0.0.2"
    assert summary["helo"] == "mail.sender.test"
    assert summary["from"] == "carol@sender.test"
    assert summary["recipients"] == ["bob@example.com"]
    assert summary["forged_ids"] == ["example.com"]
    assert {"method": "spf", "value": "pass"}.items() <= summary["results"][1].items()
    assert summary["reply"]["code"] == 250
    assert summary["verdict"] == "relayed"
    assert summary["elapsed"] >= summary["relay_time"] > 0
    assert summary["time"].startswith("20")  # the wall-clock time, not a duration
    assert all({"time", "level", "logger"} <= e.keys() for e in entries)


def test_serve_notifies_systemd_when_ready(
    make_arproxy: MakeArproxy,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        proxy = make_arproxy(smtp_sink.url)
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        assert f"MAINPID={proxy.process.pid}" in ready
        proxy.stop()
        assert listener.recv(4096) == b"STOPPING=1"
    assert os.environ["NOTIFY_SOCKET"] == str(path)
