"""Time one message's checks with a cold and a warm DNS cache.

Starts Knot on the test zones (tests/fixtures/zones), then runs the full set of
checks (iprev, SPF HELO and MAIL FROM, DKIM, DMARC) for the good sender of the test
world, REPEAT times each way: cold = a new resolver per message (empty cache),
warm = one resolver whose cache the first message filled. Prints medians.

    .venv/bin/python bench/check_timing.py [REPEAT]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import dkim

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dnsserver import KnotServer  # noqa: E402

from arproxy.config import HostPort, parse_config  # noqa: E402
from arproxy.dns import Resolver  # noqa: E402
from arproxy.outcome import ClientFacts, summary  # noqa: E402
from arproxy.pipeline import Pipeline, Session  # noqa: E402
from arproxy.resources import WorkerResources  # noqa: E402

KEY = (REPO / "tests" / "fixtures" / "keys" / "rsa2048.pem").read_bytes()
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\nTo: bob@example.com\r\nSubject: timing\r\n\r\n"
    + b"A line of body text for the hash.\r\n" * 200
)
SIGNED = dkim.sign(MESSAGE, b"s2048", b"sender.test", KEY) + MESSAGE


CONFIG = parse_config("[dns]\nmessage_budget = 10.0", "bench")


async def one_message(resources: WorkerResources) -> tuple[float, str]:
    # The live entry point (pipeline.Session), without a downstream.
    pipeline = Pipeline(CONFIG, resources=resources)
    started = time.perf_counter()
    session = Session(pipeline, ClientFacts(ip="127.0.0.2"))
    await session.helo("mail.sender.test", esmtp=True)
    results = await session.evaluate(SIGNED, sender="alice@sender.test")
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed, summary(results)


async def measure(server: KnotServer, repeat: int) -> None:
    address = [HostPort("127.0.0.1", server.port)]
    cold = []
    for _ in range(repeat):
        # A worker's resources, as `serve` builds them; a fresh resolver: a cold cache.
        cold_resources = WorkerResources.build(CONFIG, resolver=Resolver(address, timeout=2.0))
        elapsed, outcome = await one_message(cold_resources)
        cold.append(elapsed)
        queries = cold_resources.resolver.queries_sent
        await cold_resources.close()
    warm_resources = WorkerResources.build(CONFIG, resolver=Resolver(address, timeout=2.0))
    warm_resolver = warm_resources.resolver
    await one_message(warm_resources)
    sent_before = warm_resolver.queries_sent
    warm = [(await one_message(warm_resources))[0] for _ in range(repeat)]
    warm_queries = (warm_resolver.queries_sent - sent_before) / repeat
    await warm_resources.close()
    print(f"results: {outcome}")
    print(
        f"cold cache: median {statistics.median(cold) * 1000:.2f} ms "
        f"(min {min(cold) * 1000:.2f}, max {max(cold) * 1000:.2f}), {queries} DNS queries"
    )
    print(
        f"warm cache: median {statistics.median(warm) * 1000:.2f} ms "
        f"(min {min(warm) * 1000:.2f}, max {max(warm) * 1000:.2f}), "
        f"{warm_queries:.1f} DNS queries per message"
    )
    print(
        f"ratio cold/warm: {statistics.median(cold) / statistics.median(warm):.1f}x "
        f"over {repeat} messages each"
    )


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    server = KnotServer()
    try:
        asyncio.run(measure(server, repeat))
    finally:
        server.close()


if __name__ == "__main__":
    main()
