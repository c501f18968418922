"""Load test of ``fourm21-serve``: N concurrent clients send real images for a fixed time; JSON lines on stdout.

It starts the service itself on 127.0.0.1 (a free port, nothing else listens) over a checkpoint or an export
directory, then for each client count runs an httpx asyncio client for ``--duration`` seconds (at most
``--max-requests`` requests), each client sending the next image as soon as it has its answer and waiting out
``Retry-After`` when refused (429, 503). One line per client count:

  throughput_rps      answered 200s per second of the run
  latency_ms          p50 / p95 / p99 / max of the 200s, request sent to answer read
  status              every status code seen, counted; 503 / 504 (queue and request timeouts, designed) are
                      also summed in ``designed_503_504``, any other 5xx in ``other_5xx``
  unanswered          requests that got no HTTP answer at all (connection error, client timeout)
  batch_sizes         how many batches of each size the service formed in the run (``GET /info``)
  rss_mb_start / _end the service's resident memory before and after (``process_resident_memory_bytes``)

Then ``--memory-requests`` requests in a row with the RSS sampled every ``--memory-every`` (growth after
``--memory-warmup``), and a ``summary`` line. Exit status 1 when a request went unanswered or got a 5xx other
than 503/504. The service is stopped (SIGTERM) at the end, however the run ends.

    python scripts/bench_serve.py --model runs/x/checkpoints/best.ckpt --images data/pets/val2017
    python scripts/bench_serve.py --model runs/export/x/export --images imgs --clients 8 --duration 5 \\
        --serve-args max_queue=16 max_batch_size=8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DESIGNED_5XX = (503, 504)
KEEPALIVE_S = 2.0  # the clients' keep-alive expiry: under uvicorn's timeout_keep_alive (5 s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a .ckpt or a directory written by fourm21-export")
    p.add_argument("--images", required=True, nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--max-images", type=int, default=64, help="at most this many images, held in memory")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    p.add_argument("--max-requests", type=int, default=20_000, help="at most this many requests per client count")
    p.add_argument("--memory-requests", type=int, default=2000, help="requests in a row for the RSS run (0: none)")
    p.add_argument("--memory-warmup", type=int, default=100)
    p.add_argument("--memory-every", type=int, default=100, help="sample the RSS every this many requests")
    p.add_argument("--num-threads", type=int, default=None, help="the service's torch threads (num_threads=)")
    p.add_argument("--serve-args", nargs="*", default=[], help="more fourm21-serve overrides (key=value)")
    p.add_argument("--query", default="masks=false", help="the /predict query string")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for /health")
    return p.parse_args(argv)


def find_images(sources: list[str], limit: int) -> list[tuple[str, bytes]]:
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            files += sorted(f for f in src.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file():
            files.append(src)
        else:
            sys.exit(f"bench_serve: --images {src}: not found")
    if not files:
        sys.exit(f"bench_serve: no images ({', '.join(IMAGE_SUFFIXES)}) in {sources}")
    return [(f.name, f.read_bytes()) for f in files[:limit]]


def model_format(path: Path) -> str:
    if path.is_file():
        return "checkpoint" if path.suffix == ".ckpt" else path.suffix.lstrip(".")
    if any(path.glob("*.xml")):
        return "openvino"
    if any(path.glob("*.onnx")):
        return "onnx"
    return "export"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``fourm21-serve`` in a child process on 127.0.0.1; ``stop`` sends SIGTERM (kill after 30 s)."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        threads = [f"num_threads={args.num_threads}"] if args.num_threads else []
        self.cmd = [sys.executable, "-m", "fourm21.engine.serve", f"ckpt_path={args.model}", "host=127.0.0.1",
                    f"port={self.port}", f"hydra.run.dir={run_dir}", "log_level=warning", *threads, *args.serve_args]
        self.log = run_dir / "service.log"
        run_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONWARNINGS="ignore"))

    def wait_healthy(self, timeout_s: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fourm21-serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"fourm21-serve not healthy after {timeout_s} s: {self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_mb(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "process_resident_memory_bytes":
                    return round(s.value / 2**20, 1)
        raise RuntimeError("/metrics has no process_resident_memory_bytes")

    def batch_sizes(self) -> Counter[int]:
        sizes = httpx.get(f"{self.url}/info", timeout=30).json()["batching"]["batch_sizes"]
        return Counter({int(k): int(v) for k, v in sizes.items()})

    def info(self) -> dict:
        return httpx.get(f"{self.url}/info", timeout=30).json()


def _retry_after(r: httpx.Response) -> float:
    try:
        return max(0.0, float(r.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def load_level(url: str, images: list[tuple[str, bytes]], clients: int, duration_s: float, max_requests: int,
                     query: str, timeout_s: float) -> dict:
    """``clients`` concurrent senders for ``duration_s`` (or ``max_requests``): statuses and 200 latencies."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    sent = 0
    end = time.monotonic() + duration_s

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        i = k
        while time.monotonic() < end and sent < max_requests:
            sent += 1
            name, data = images[i % len(images)]
            i += clients
            start = time.monotonic()
            try:
                r = await http.post(f"/predict?{query}", files={"image": (name, data)})
            except httpx.HTTPError as e:
                statuses[f"unanswered:{type(e).__name__}"] += 1
                continue
            statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                latencies.append(time.monotonic() - start)
            elif r.status_code in (429, 503):
                await asyncio.sleep(min(_retry_after(r), max(0.0, end - time.monotonic())))

    # an idle connection is dropped by the client before uvicorn's 5 s keep-alive timeout closes it from the
    # server's side: else a client back from a Retry-After wait can race that close and lose its request
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=KEEPALIVE_S)
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    elapsed = time.monotonic() - start
    lat = np.asarray(latencies) * 1e3
    pct = {f"p{q}": round(float(np.percentile(lat, q)), 1) if lat.size else None for q in (50, 95, 99)}
    codes = {k: v for k, v in statuses.items() if not k.startswith("unanswered")}
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": sum(statuses.values()),
            "ok": len(latencies), "throughput_rps": round(len(latencies) / elapsed, 2),
            "latency_ms": {**pct, "max": round(float(lat.max()), 1) if lat.size else None},
            "status": dict(sorted(codes.items())),
            "designed_503_504": sum(v for k, v in codes.items() if int(k) in DESIGNED_5XX),
            "other_5xx": sum(v for k, v in codes.items() if int(k) >= 500 and int(k) not in DESIGNED_5XX),
            "unanswered": sum(v for k, v in statuses.items() if k.startswith("unanswered")),
            "unanswered_kinds": {k.split(":", 1)[1]: v for k, v in statuses.items() if k.startswith("unanswered")}}


def memory_run(service: Service, images: list[tuple[str, bytes]], n: int, warmup: int, every: int,
               query: str, timeout_s: float) -> dict:
    """``n`` requests in a row on one connection; the RSS after the warm-up and every ``every`` requests."""
    statuses: Counter[str] = Counter()
    samples: list[float] = []
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_S)
    with httpx.Client(base_url=service.url, timeout=timeout_s, limits=limits) as http:
        for i in range(n):
            name, data = images[i % len(images)]
            try:
                statuses[str(http.post(f"/predict?{query}", files={"image": (name, data)}).status_code)] += 1
            except httpx.HTTPError as e:
                statuses[f"unanswered:{type(e).__name__}"] += 1
            if i + 1 == warmup or (i + 1 > warmup and (i + 1 - warmup) % every == 0) or i + 1 == n:
                samples.append(service.rss_mb())
    growth = round(max(samples) - samples[0], 1) if samples else None
    # a leak grows with the requests; an allocator's caches go up and down: the fitted slope tells them apart
    slope = round(float(np.polyfit(np.arange(len(samples)) * every, samples, 1)[0]) * 1000, 2) \
        if len(samples) >= 3 else None
    return {"memory": {"requests": n, "warmup": warmup, "every": every, "rss_mb": samples,
                       "growth_mb_after_warmup": growth, "slope_mb_per_1000_requests": slope,
                       "status": dict(sorted(statuses.items()))}}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = find_images(args.images, args.max_images)
    model = Path(args.model)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        service = Service(args, Path(tmp) / "run")
        unanswered = other_5xx = 0
        try:
            start_s = service.wait_healthy(args.start_timeout)
            info = service.info()
            timeout_s = float(info["limits"]["request_timeout_s"]) + 10  # past it the service answers 504
            emit({"setup": {"model": str(model), "format": model_format(model), "cpu": cpu_name(),
                            "cores": os.cpu_count(), "python": platform.python_version(),
                            "images": len(images), "image_bytes_mean": int(np.mean([len(d) for _, d in images])),
                            "img_size": info["img_size"], "limits": info["limits"],
                            "batching": {k: info["batching"][k] for k in ("max_batch_size", "batch_timeout_s")},
                            "serve_args": service.cmd[3:], "start_s": round(start_s, 1), "query": args.query}})
            for clients in args.clients:
                rss_start, batches_before = service.rss_mb(), service.batch_sizes()
                rec = asyncio.run(load_level(service.url, images, clients, args.duration, args.max_requests,
                                             args.query, timeout_s))
                formed = service.batch_sizes() - batches_before
                n_batches = sum(formed.values())
                rec.update(batch_sizes={str(k): v for k, v in sorted(formed.items())},
                           mean_batch_size=round(sum(k * v for k, v in formed.items()) / n_batches, 2)
                           if n_batches else None,
                           rss_mb_start=rss_start, rss_mb_end=service.rss_mb())
                unanswered, other_5xx = unanswered + rec["unanswered"], other_5xx + rec["other_5xx"]
                emit(rec)
            if args.memory_requests:
                mem = memory_run(service, images, args.memory_requests, min(args.memory_warmup,
                                 args.memory_requests), args.memory_every, args.query, timeout_s)
                st = mem["memory"]["status"]
                unanswered += sum(v for k, v in st.items() if k.startswith("unanswered"))
                other_5xx += sum(v for k, v in st.items() if k.isdigit() and int(k) >= 500
                                 and int(k) not in DESIGNED_5XX)
                emit(mem)
        finally:
            code = service.stop()
        emit({"summary": {"unanswered": unanswered, "other_5xx": other_5xx, "service_exit_code": code,
                          "ok": unanswered == 0 and other_5xx == 0 and code == 0}})
    return 0 if unanswered == 0 and other_5xx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
