"""cProfile of one arproxy worker under the bench's load: where its CPU goes, per function.

    .venv/bin/python bench/cprofile_worker.py [--messages N] [--out DIR]

The same world as bench/throughput.py (Knot with the test zones, smtp-sink, the 11 KB
DKIM-signed message from 127.0.0.2 at concurrency 20, every check on and passing), with
`arproxy serve` (1 worker) run under `python -m cProfile`. After a 100-message warm-up
and N messages (default 2000), arproxy is stopped with SIGTERM (it drains and exits, so
cProfile writes its statistics) and the top functions by own and by cumulative time are
written to DIR/cprofile-worker.txt (default bench/profiles), the raw statistics beside it
(load them with `pstats`).

Figures are profiled time: cProfile slows Python calls several-fold, so compare runs with
each other (the same N), never with bench/run's CPU per message. cProfile counts each
resumption of a coroutine as a call: the ncalls of async functions are inflated, those of
plain functions are real. This is how each step of issue 9 was chosen (README,
"Per-message CPU work").
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import signal
import subprocess
import sys
from pathlib import Path

import throughput as bench

WARMUP = 100
CONCURRENCY = 20
TOP = 80


async def profile(messages: int, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "cprofile-worker.pstats"
    with bench.world() as context:
        payload = bench.data_payload(bench.build_message())
        port = bench.free_port()
        config = context.workdir / "arproxy.toml"
        config.write_text(
            bench.ARPROXY_CONFIG.format(
                port=port,
                server="workers = 1",
                relay="",
                sink_port=context.sink.port,
                nameserver=context.knot.address,
                max_connections=2000,
            )
        )
        command = [sys.executable, "-m", "cProfile", "-o", str(raw), "-m", "arproxy", "serve"]
        process = context.procs.start(
            [*command, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=context.workdir,
        )
        bench.wait_for_port(port, process, timeout=20.0)
        await bench.run_load(port, payload, WARMUP, CONCURRENCY)
        load = await bench.run_load(port, payload, messages, CONCURRENCY)
        if load.errors:
            raise SystemExit(f"the load failed: {load.errors[:3]}")
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    text = io.StringIO()
    stats = pstats.Stats(str(raw), stream=text)
    text.write(f"# arproxy 1 worker, {WARMUP} + {messages} messages at c={CONCURRENCY}\n")
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumulative").print_stats(TOP)
    summary = out_dir / "cprofile-worker.txt"
    summary.write_text(text.getvalue())
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=bench.REPO / "bench" / "profiles")
    args = parser.parse_args()
    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be between 1 and 1000000")
    print(asyncio.run(profile(args.messages, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
