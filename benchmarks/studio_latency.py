"""Does the studio stay responsive while it trains? Job-status latency, idle and under a training job.

Run: python benchmarks/studio_latency.py [--model smollm2-135m] [--seconds 60] [--rate 20]

The studio is started as a subprocess (`tunewright studio --home TMP --port P --model M`), as a
user runs it; the model defaults to the tiny random test model (tests/conftest.py). A job on the
intents fixture is created and GET /v1/fine_tuning/jobs/{id} and GET /jobs/{id} (the job's web
page) are each requested at a steady `--rate` per second for `--seconds`: first while the job
waits behind a blocker (the studio runs one job at a time: idle baseline), then while the job
trains. Prints p50/p95/p99/max per route and phase, the job's steps during the loaded window and
this machine's matmul rate, so runs on different machines can be compared.
"""

from __future__ import annotations

import argparse
import csv
import json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from train_throughput import matmul_rates  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "intents_train.csv"
# Train far longer than the window (the job is cancelled after it), log every step, no evaluation.
LONG = (
    "train.epochs=1000 train.max_steps=1000000 train.log_every_steps=1 "
    "train.checkpoint_every_steps=1000000 train.report_to=[] "
    "evaluate.models=[tuned] evaluate.general_check=false"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def intents_jsonl() -> bytes:
    with FIXTURE.open(encoding="utf-8") as f:
        rows = [
            {
                "messages": [
                    {"role": "system", "content": "Name the intent."},
                    {"role": "user", "content": r["text"]},
                    {"role": "assistant", "content": r["category"]},
                ]
            }
            for r in csv.DictReader(f)
        ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def start_studio(home: Path, model: str, port: int, log: Path) -> subprocess.Popen:
    # output to a file, not a pipe nobody reads: a full pipe would block the server
    studio = subprocess.Popen(
        [sys.executable, "-m", "tunewright.cli", "studio", "--home", str(home)]
        + ["--port", str(port), "--model", model],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if studio.poll() is not None:
            raise SystemExit(f"studio exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return studio
        except httpx.HTTPError:
            time.sleep(0.5)
    studio.kill()
    raise SystemExit("studio did not start within 300 s")


def poll(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """GET `url` every 1/rate s for `seconds` (a late request is not caught up): latencies in
    ms, and the number of answers that were not 200."""
    latencies, errors = [], 0
    with httpx.Client(timeout=30) as client:
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            t = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t) * 1000)
            errors += not ok
    return latencies, errors


def measure(base: str, job_id: str, rate: float, seconds: float) -> dict[str, tuple]:
    """Both routes polled at once, each on its own thread."""
    routes = {"GET /v1/fine_tuning/jobs/{id}": f"/v1/fine_tuning/jobs/{job_id}"}
    routes["GET /jobs/{id} (page)"] = f"/jobs/{job_id}"
    results: dict[str, tuple] = {}
    threads = [
        threading.Thread(
            target=lambda n=name, p=path: results.__setitem__(n, poll(base + p, rate, seconds))
        )
        for name, path in routes.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:7.1f}  p95 {q[94]:7.1f}  p99 {q[98]:7.1f}  max {max(ms):7.1f} ms"


def last_step(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
    return max(steps, default=0)


def wait_for(check, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model (default: the tiny test model)")
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase")
    parser.add_argument("--rate", type=float, default=20, help="requests per second per route")
    args = parser.parse_args()

    rates = matmul_rates()
    print(f"matmul rate bf16 {rates['bfloat16']:.1f}, fp32 {rates['float32']:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from tests.conftest import build_tiny_model

            model = str(build_tiny_model(tmp / "tiny-model"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        studio = start_studio(tmp / "home", model, port, tmp / "studio.log")
        try:
            api = httpx.Client(base_url=base + "/v1", timeout=60)
            upload = api.post(
                "/files",
                files={"file": ("intents.jsonl", intents_jsonl())},
                data={"purpose": "fine-tune"},
            )
            upload.raise_for_status()
            job_request = {
                "model": Path(model).name if args.model is None else model,
                "training_file": upload.json()["id"],
                "metadata": {"tunewright_overrides": LONG},
            }
            # The idle baseline is taken on a studio with nothing running: the measured job is
            # created only after it.
            probe = api.post("/fine_tuning/jobs", json=job_request)
            probe.raise_for_status()
            job_id = probe.json()["id"]
            api.post(f"/fine_tuning/jobs/{job_id}/cancel").raise_for_status()
            wait_for(
                lambda: api.get(f"/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled",
                "the probe job to be cancelled",
            )
            idle = measure(base, job_id, args.rate, args.seconds)

            job = api.post("/fine_tuning/jobs", json=job_request)
            job.raise_for_status()
            job_id = job.json()["id"]
            run_dir = tmp / "home" / "runs" / job_id
            wait_for(lambda: last_step(run_dir) > 0, "the job's first step")
            steps_before = last_step(run_dir)
            loaded = measure(base, job_id, args.rate, args.seconds)
            steps = last_step(run_dir) - steps_before
            status = api.get(f"/fine_tuning/jobs/{job_id}").json()["status"]
            api.post(f"/fine_tuning/jobs/{job_id}/cancel")
        finally:
            studio.terminate()
            try:
                studio.wait(timeout=60)
            except subprocess.TimeoutExpired:
                studio.kill()

    print(f"model {model if args.model else 'tiny test model'}, {args.rate:g} requests/s per route")
    for phase, results in (("idle", idle), ("training", loaded)):
        for route, (ms, errors) in results.items():
            print(
                f"{phase:8s} {route:32s} {percentiles(ms)}  ({len(ms)} requests, {errors} errors)"
            )
    print(f"job steps during the {args.seconds:g} s training window: {steps} (status {status})")


if __name__ == "__main__":
    main()
