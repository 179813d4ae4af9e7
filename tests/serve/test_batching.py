"""Concurrent chat requests are decoded together (fewer model calls than requests), each answer
equal to the same request answered alone; a full queue answers 503 with Retry-After."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

PROMPTS = [
    "سلام",
    "یک داستان کوتاه بگو",
    "ملکه الیزابت کیست؟",
    "Hello world",
    "پایتخت ایران کجاست؟",
    "شعر بگو",
]


def ask(url: str, body: dict) -> dict:
    """A completion (a streamed one is put back together) as {content, finish_reason, tokens}."""
    if not body.get("stream"):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return {"content": choice["message"]["content"], "finish": choice["finish_reason"]}
    pieces, finish = [], None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                pieces.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
    return {"content": "".join(pieces).strip(), "finish": finish}


def bodies() -> list[dict]:
    """Greedy requests with their own limits: token counts, a stop string, one streamed."""
    out = [
        {"messages": [{"role": "user", "content": p}], "max_tokens": 6 + 3 * i} for i, p in enumerate(PROMPTS)
    ]
    out[1]["stop"] = ["ا"]
    out[2]["stream"] = True
    return out


@pytest.fixture(scope="module")
def alone(tiny_run):
    """Each request's answer with batching off (one request per model call)."""
    from fa_adapt.generation import generate, load_target

    target = load_target(str(tiny_run), device="cpu", dtype="fp32")
    answers = []
    for body in bodies():
        a = generate(
            target, body["messages"][0]["content"], system=target.system, max_new_tokens=body["max_tokens"]
        )
        answers.append(a)
    return answers


def test_concurrent_requests_share_model_calls_and_answer_as_alone(start_server, alone):
    with start_server(max_batch=8, batch_wait_ms=500) as url:
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda b: ask(url, b), bodies()))
        health = httpx.get(url + "/health").json()
    assert health["rows"] == len(PROMPTS)
    assert health["batches"] < len(PROMPTS) and health["largest_batch"] >= 3, health
    for body, answer, one in zip(bodies(), got, alone, strict=True):
        want = one.answer
        if "stop" in body:  # the same tokens, cut before the stop string
            want = want[: want.find(body["stop"][0])].strip() if body["stop"][0] in want else want
        assert answer["content"] == want, body
        assert answer["finish"] == (
            "stop" if "stop" in body and body["stop"][0] in one.answer or one.stopped else "length"
        )


def test_a_short_answer_in_a_batch_comes_back_before_the_batch_ends(start_server):
    """A row that ends early is answered at once: it does not wait for the longest row."""
    user = [{"role": "user", "content": "سلام"}]
    timed = {}

    def timed_ask(body: dict) -> None:
        t0 = time.perf_counter()
        ask(url, body)
        timed[body["max_tokens"]] = time.perf_counter() - t0

    with start_server(max_batch=8, batch_wait_ms=300) as url:
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    timed_ask, [{"messages": user, "max_tokens": 2}, {"messages": user, "max_tokens": 1500}]
                )
            )
        health = httpx.get(url + "/health").json()
    assert (health["batches"], health["largest_batch"]) == (1, 2), health
    assert timed[2] < timed[1500] / 3, timed


def test_batching_off_is_one_model_call_per_request(start_server, alone):
    with start_server(max_batch=1, batch_wait_ms=500) as url:
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda b: ask(url, b), bodies()[3:]))
        health = httpx.get(url + "/health").json()
    assert (health["batches"], health["largest_batch"]) == (3, 1)
    assert [g["content"] for g in got] == [a.answer for a in alone[3:]]


def test_different_sampling_settings_go_in_different_batches(start_server):
    greedy = {"messages": [{"role": "user", "content": "سلام"}], "max_tokens": 4}
    sampled = {**greedy, "temperature": 0.8, "top_p": 0.9}
    with start_server(max_batch=8, batch_wait_ms=500) as url:
        with ThreadPoolExecutor(6) as pool:
            list(
                pool.map(
                    lambda b: ask(url, b),
                    [greedy, greedy, greedy, sampled, sampled, {**greedy, "temperature": 1.0, "seed": 3}],
                )
            )
        health = httpx.get(url + "/health").json()
    # greedy x3 together, the two sampled ones together, the seeded one alone
    assert (health["batches"], health["rows"], health["largest_batch"]) == (3, 6, 3), health


def test_a_full_queue_is_503_with_retry_after_and_the_server_recovers(start_server):
    long = {"messages": [{"role": "user", "content": "سلام"}], "max_tokens": 3000, "stream": True}
    with start_server(max_batch=1, max_queue=1) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=long, timeout=60) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response (httpx)
            next(lines)  # the worker is busy with it
            with httpx.stream("POST", url + "/v1/chat/completions", json=long, timeout=60) as waiting:
                assert waiting.status_code == 200
                health = httpx.get(url + "/health").json()
                assert (health["queued"], health["in_flight"]) == (1, 1), health
                refused = httpx.post(url + "/v1/chat/completions", json={**long, "stream": False}, timeout=60)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                error = refused.json()["error"]
                assert error["code"] == "queue_full" and "--max-queue" not in error["message"]
        # both clients left: their slots are free, and the next request is answered
        deadline, health = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            health = httpx.get(url + "/health").json()
            if health["in_flight"] == 0 and health["queued"] == 0:
                break
            time.sleep(0.05)
        assert (health["in_flight"], health["queued"]) == (0, 0), health
        assert ask(url, {**long, "stream": False, "max_tokens": 3})["finish"] == "length"
        assert httpx.get(url + "/health").json()["status"] == "ok"
