"""Load test of `tunewright serve`: N concurrent OpenAI clients for a fixed time; errors, requests/s
and latency percentiles, beside a one-client baseline run against the same server.

Run: python benchmarks/serve_load.py [--model smollm2-135m] [--clients 16] [--seconds 60]

The server is started as a subprocess (`tunewright serve MODEL --port P`), exactly as a user runs
it, and each client is a thread with its own `openai.OpenAI` client and no retries, so every
failure is counted. Questions are Banking77 test questions; one request in four streams. The
one-client baseline shows what batching buys: throughput with N clients / throughput with one.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI

QUESTIONS_CSV = Path(__file__).parents[1] / "recipes" / "data" / "banking77" / "test.csv"


def questions() -> list[str]:
    with QUESTIONS_CSV.open(encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)][:500]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch_size: int, log: Path) -> subprocess.Popen:
    # output to a file, not a pipe nobody reads: a full pipe would block the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewright.cli",
            "serve",
            model,
            "--port",
            str(port),
            "--max-batch-size",
            str(max_batch_size),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not start within 300 s")


def load(
    base_url: str, model: str, clients: int, seconds: float, max_tokens: int, texts: list[str]
) -> dict:
    """`clients` threads sending requests back to back until `seconds` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    tokens = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
        i = index
        while time.monotonic() < stop_at:
            messages = [
                {"role": "system", "content": "Name the banking intent."},
                {"role": "user", "content": texts[i % len(texts)]},
            ]
            started = time.perf_counter()
            try:
                if i % 4 == 3:
                    stream = client.chat.completions.create(
                        model=model,
                        messages=messages,
                        max_tokens=max_tokens,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    used = [c.usage.completion_tokens for c in stream if c.usage is not None][-1]
                else:
                    answer = client.chat.completions.create(
                        model=model, messages=messages, max_tokens=max_tokens, temperature=0
                    )
                    used = answer.usage.completion_tokens
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens[0] += used
            except Exception as e:  # noqa: BLE001 - every failure counts; the client does not retry
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": len(latencies) / elapsed,
        "completion_tokens_per_second": tokens[0] / elapsed,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan"),
    }


def show(result: dict) -> None:
    print(
        f"  {result['clients']:>2} clients, {result['seconds']:.1f} s: {result['requests']} requests, "
        f"{len(result['errors'])} errors, {result['requests_per_second']:.2f} requests/s, "
        f"{result['completion_tokens_per_second']:.1f} completion tokens/s, "
        f"latency p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s"
    )
    for error in sorted(set(result["errors"]))[:5]:
        print(f"    error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model or run folder to serve")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--baseline-seconds", type=float, default=20.0, help="one-client baseline (0: skip)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    port = free_port()
    log = Path(tempfile.gettempdir()) / f"serve_load-{port}.log"
    server = start_server(args.model, port, max_batch_size=args.clients, log=log)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        model = (
            OpenAI(base_url=base_url, api_key="unused").models.list().data[-1].id
        )  # the tuned one, if any
        texts = questions()
        print(
            f"serve_load: model {model} ({args.model}), max_tokens {args.max_tokens}, "
            f"{os.cpu_count()} CPU cores, torch threads = cores"
        )
        load(base_url, model, 2, 5, args.max_tokens, texts)  # warm-up, not reported
        baseline = (
            load(base_url, model, 1, args.baseline_seconds, args.max_tokens, texts)
            if args.baseline_seconds
            else None
        )
        if baseline:
            show(baseline)
        result = load(base_url, model, args.clients, args.seconds, args.max_tokens, texts)
        show(result)
        if baseline:
            print(
                f"  throughput with {args.clients} clients / with 1 client: "
                f"{result['requests_per_second'] / baseline['requests_per_second']:.2f}x"
            )
        print(
            "PASS: zero errors" if not result["errors"] else f"FAIL: {len(result['errors'])} errors"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
