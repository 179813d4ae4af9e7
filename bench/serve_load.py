"""`adapt serve` under load: N concurrent chat clients, with request batching on and off.

    python bench/serve_load.py [--run RUN] [--clients 1,4,16] [--seconds 60] [--max-tokens 32]
                               [--max-batch 16] [--threads N] [--device cpu|cuda]

Starts `adapt serve RUN --captioner none` (RUN: the embedded Gemma 3 270M by default) twice on a
free loopback port, as its own process: batching on (`--max-batch 16`) and off (`--max-batch 1`).
For each, at every --clients level, N clients of the official `openai` async package (no retries,
so every failure counts) each send chat completions in a closed loop for --seconds: one of the
source's six Persian prompts (client i starts at prompt i and goes round), a fixed `max_tokens`,
greedy (temperature 0). A request started before the deadline is waited for and counted; the
level's wall time runs from the first request to the last answer. One warm-up request per server
is not counted.

Reported per level: requests/s, completion tokens/s (the server's `usage.completion_tokens`),
p50/p95/p99 latency of a whole request, errors, and the server process's peak resident memory
during the level (VmHWM from /proc, reset before each level). `vs_off`: tokens/s with batching on
over batching off at the same N (the issue's goal: at least 3x at 16 clients, zero errors).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("COLUMNS", "200")  # the results table is wide; do not squeeze it to 80
from _common import load_average, machine, report, require_device  # noqa: E402

STARTUP_TIMEOUT_S = 600  # the 270M converts into the cache on a first run; a busy 2-core machine is slow


def _prompts() -> list[str]:
    import fa_adapt

    path = Path(fa_adapt.__file__).parent / "data" / "prompts_fa.txt"
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_status(pid: int, field: str) -> float:
    """`field` (VmRSS, VmHWM) of process `pid` from /proc, in MiB; NaN where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak(pid: int) -> None:
    """Restart the peak-resident-memory count of `pid` (Linux `clear_refs` 5: VmHWM := VmRSS)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class Server:
    """`adapt serve` as a child process, on a free loopback port, its output in a log file."""

    def __init__(self, run: str, max_batch: int, threads: int | None, device: str) -> None:
        self.label = "batching off" if max_batch == 1 else f"batching on (max {max_batch})"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "adapt", "serve", run, "--captioner", "none",
            "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", str(max_batch), "--device", device,
        ]  # fmt: skip
        env = dict(os.environ)
        if threads:  # torch reads it at start-up; unset, the server keeps its own default
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> float:
        """Seconds until GET /health answers 200; exits with the server's log if it dies or hangs."""
        import httpx

        start = time.perf_counter()
        while time.perf_counter() - start < STARTUP_TIMEOUT_S:
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} while starting")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.fail(f"not ready after {STARTUP_TIMEOUT_S} s")
        raise AssertionError  # unreachable: fail() exits

    def fail(self, why: str) -> None:
        self.stop()
        self.log.seek(0)
        tail = self.log.read()[-3000:]
        sys.exit(f"error: `{' '.join(self.command[2:])}` {why}; its output ends:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _client(
    api: Any, model: str, prompts: list[str], first: int, deadline: float, max_tokens: int, out: dict
) -> None:
    """One closed-loop client: the next request as soon as the previous answer is in."""
    i = first
    while time.perf_counter() < deadline:
        prompt = prompts[i % len(prompts)]
        i += 1
        start = time.perf_counter()
        try:
            reply = await api.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0,
            )
        except Exception as err:  # every failure is a data point: count it and go on
            out["errors"].append(f"{type(err).__name__}: {str(err)[:200]}")
            await asyncio.sleep(0.1)  # a failing server must not be hammered in a tight loop
            continue
        out["latencies"].append(time.perf_counter() - start)
        out["tokens"] += reply.usage.completion_tokens if reply.usage else 0
        out["ends"].append(time.perf_counter())


def _percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None without values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def _level(server: Server, model: str, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """N clients for --seconds against `server`: the measured row (without the on/off ratio)."""
    import httpx
    from openai import AsyncOpenAI

    prompts = _prompts()
    out: dict[str, Any] = {"latencies": [], "tokens": 0, "errors": [], "ends": []}
    # one connection per client (the default pool would queue clients beyond its limit)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with AsyncOpenAI(
        base_url=server.url + "/v1",
        api_key="unused",
        max_retries=0,
        timeout=args.request_timeout,
        http_client=httpx.AsyncClient(limits=limits, timeout=args.request_timeout),
    ) as api:
        _reset_peak(server.proc.pid)
        before = load_average()
        start = time.perf_counter()
        deadline = start + args.seconds
        await asyncio.gather(
            *(_client(api, model, prompts, c, deadline, args.max_tokens, out) for c in range(clients))
        )
    wall = max([*out["ends"], start + args.seconds]) - start
    lat = out["latencies"]
    return {
        "config": server.label,
        "clients": clients,
        "requests": len(lat),
        "req_s": len(lat) / wall,
        "tokens_s": out["tokens"] / wall,
        "p50_s": _percentile(lat, 50),
        "p95_s": _percentile(lat, 95),
        "p99_s": _percentile(lat, 99),
        "errors": len(out["errors"]),
        "peak_rss_mib": _proc_status(server.proc.pid, "VmHWM"),
        "_wall_s": wall,
        "_completion_tokens": out["tokens"],
        "_first_errors": out["errors"][:5],
        "_load_average": [before, load_average()],
    }


def _measure(max_batch: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start one server, warm it up, run every --clients level; its rows and start-up facts."""
    import httpx

    server = Server(args.run, max_batch, args.threads, args.device)
    print(
        f"[{time.strftime('%H:%M:%S')}] {server.label}: starting `adapt serve {args.run}` …", file=sys.stderr
    )
    try:
        ready_s = server.wait_ready()
        model = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        warm = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": _prompts()[0]}],
                  "max_tokens": args.max_tokens, "temperature": 0},
            timeout=args.request_timeout,
        )  # fmt: skip
        if warm.status_code != 200:
            server.fail(f"answered the warm-up request with {warm.status_code}: {warm.text[:500]}")
        rows = []
        for n in args.clients:
            print(f"[{time.strftime('%H:%M:%S')}]   {n} client(s) for {args.seconds} s …", file=sys.stderr)
            row = asyncio.run(_level(server, model, n, args))
            print(f"    {row['tokens_s']:.1f} tok/s, {row['errors']} errors", file=sys.stderr)
            rows.append(row)
        facts = {"command": " ".join(server.command[2:]), "model": model, "ready_s": ready_s,
                 "rss_after_mib": _proc_status(server.proc.pid, "VmRSS")}  # fmt: skip
        return rows, facts
    finally:
        server.stop()


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", default="base", help="what `adapt serve` serves (default: base, the embedded 270M)"
    )
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrent clients (default 1,4,16)")
    ap.add_argument("--seconds", type=float, default=60, help="closed-loop time per level (default 60)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    ap.add_argument(
        "--max-batch", type=int, default=16, help="--max-batch of the batching-on server (default 16)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the server (default: the server's own)"
    )
    ap.add_argument(
        "--request-timeout", type=float, default=600, help="seconds one request may take (default 600)"
    )
    ap.add_argument("--device", default="cpu", help="the server's --device: cpu (default) or cuda")
    ap.add_argument("--name", default="serve_load", help="bench/results/NAME.json (default serve_load)")
    args = ap.parse_args()
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        sys.exit(f"error: --clients: comma-separated whole numbers, got {args.clients!r}")
    if not args.clients or min(args.clients) < 1:
        sys.exit("error: --clients: at least one level, each at least 1")
    if args.seconds <= 0 or args.max_tokens < 1 or args.max_batch < 2:
        sys.exit(
            "error: --seconds must be > 0, --max-tokens >= 1 and --max-batch >= 2 (1 is the 'off' server)"
        )
    return args


def main() -> None:
    args = _args()
    require_device(args.device)
    started = load_average()
    on_rows, on_facts = _measure(args.max_batch, args)
    off_rows, off_facts = _measure(1, args)
    for on, off in zip(on_rows, off_rows, strict=True):
        on["vs_off"] = on["tokens_s"] / off["tokens_s"] if off["tokens_s"] else None
    rows = on_rows + off_rows
    meta = machine(args.device) | {
        "command": " ".join(["python", "bench/serve_load.py", *sys.argv[1:]]),
        "run": args.run,
        "servers": {"on": on_facts, "off": off_facts},
        "server_threads": args.threads or "the server's default",
        "clients": args.clients,
        "seconds_per_level": args.seconds,
        "max_tokens": args.max_tokens,
        "decoding": "greedy (temperature 0), the answer stops at <|im_end|> or max_tokens",
        "prompts": _prompts(),
        "client": "openai AsyncOpenAI, max_retries=0, one connection per client, closed loop",
        "load_average_start": started,
        "load_average_end": load_average(),
        "details": [
            {"config": r["config"], "clients": r["clients"]}
            | {k.lstrip("_"): v for k, v in r.items() if k.startswith("_")}
            for r in rows
        ],
    }
    shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    report(args.name, "adapt serve under load (closed-loop chat clients)", shown, meta)


if __name__ == "__main__":
    main()
