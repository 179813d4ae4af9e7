"""Bad requests get OpenAI-style error objects with a 4xx status, never a 500; a client that leaves
mid-stream frees its slot; random JSON bodies never break the server (hypothesis)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

openai = pytest.importorskip("openai")

USER = [{"role": "user", "content": "سلام"}]


def post(url: str, body, path: str = "/v1/chat/completions", **kw) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(
        url + path, content=content, headers={"content-type": "application/json"}, timeout=60, **kw
    )


def assert_error(response: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if param != "any":
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        ({}, "messages", "Field required"),
        ([1, 2], None, "JSON object"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": "hello"}, "messages", "list"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "string"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "'user'"),
        ({"messages": [{"content": "x"}]}, "messages.0.role", "required"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages", "empty"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages", "end with a user message"),
        ({"messages": USER, "max_tokens": "5"}, "max_tokens", "integer"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": USER, "temperature": "hot"}, "temperature", "number"),
        ({"messages": USER, "temperature": 0.001}, "temperature", "at least 0.01"),
        ({"messages": USER, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": USER, "stop": [""]}, "stop", "empty"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": USER, "stream": "yes"}, "stream", "boolean"),
        ({"messages": USER, "n": 2}, "n", "1"),
        ({"messages": USER, "max_tokens": 5000}, "messages", "at most 4096"),
        ({"messages": USER, "max_tokens": 9000}, "max_tokens", "less than or equal to 8192"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_field(server_url, body, param, says):
    error = assert_error(post(server_url, body), 400, param)
    assert says in error["message"], error


def test_the_openai_client_sees_the_errors(server_url):
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert missing.value.body["code"] == "model_not_found" and "tiny-lora" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-lora", messages=[])
    assert bad.value.body["param"] == "messages"


def test_unknown_routes_methods_and_models(server_url):
    assert_error(httpx.get(server_url + "/v1/nothing"), 404)
    assert_error(httpx.get(server_url + "/v1/chat/completions"), 405)
    assert_error(post(server_url, {"messages": USER, "model": "nope"}), 404, "model")
    assert_error(post(server_url, {"image": "aGVsbG8=", "model": "nope"}, "/v1/captions"), 404, "model")


def test_bad_images_are_400(server_url, tmp_path):
    files = {"file": ("notes.txt", b"this is not an image", "text/plain")}
    error = assert_error(httpx.post(server_url + "/v1/captions", files=files, timeout=30), 400, "file")
    assert "notes.txt" in error["message"] and "not a readable image" in error["message"]
    assert "/tmp" not in error["message"]  # the server's temporary file is not the user's business
    assert_error(post(server_url, {"image": "%%%"}, "/v1/captions"), 400, "image")
    assert_error(post(server_url, {"image": ""}, "/v1/captions"), 400, "image")
    assert_error(post(server_url, {"image": 5}, "/v1/captions"), 400, "image")
    assert_error(post(server_url, {"image": "aGVsbG8="}, "/v1/captions"), 400, "image")  # "hello"
    assert_error(httpx.post(server_url + "/v1/captions", files={"other": ("a", b"x")}), 400, "file")
    assert_error(
        httpx.post(server_url + "/v1/captions", content=b"raw", headers={"content-type": "image/png"}), 400
    )


def test_oversized_bodies_are_413_while_reading(start_server, photo):
    with start_server(max_body_mb=0.01) as url:  # 10 KiB
        big = {"messages": [{"role": "user", "content": "x" * 20_000}]}
        error = assert_error(post(url, big), 413)
        assert "--max-body-mb" in error["message"]

        def chunks():  # no Content-Length: the limit is found while the body is read
            for _ in range(40):
                yield b" " * 1024

        chunked = httpx.post(
            url + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413)
        assert photo.stat().st_size > 10 * 1024
        with photo.open("rb") as f:
            assert_error(httpx.post(url + "/v1/captions", files={"file": (photo.name, f)}), 413)
        assert post(url, {"messages": USER, "max_tokens": 2}).status_code == 200  # small ones still pass


def wait_until(url: str, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health").json()
        if check(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_a_client_leaving_mid_stream_frees_its_slot(start_server):
    with start_server() as url:
        body = {"messages": USER, "max_tokens": 3000, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(6)]  # the role chunk and a few pieces of text
            assert any('"content": "' in line and '"content": ""' not in line for line in seen)
            assert httpx.get(url + "/health").json()["in_flight"] == 1
        health = wait_until(url, lambda h: h["in_flight"] == 0 and h["cancelled"] == 1)
        assert (health["in_flight"], health["queued"], health["cancelled"]) == (0, 0, 1), health
        # the row stopped early: a full answer of 3000 tokens would have taken far longer
        assert post(url, {"messages": USER, "max_tokens": 2}).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", 3]),
        "content": JSON | st.text(max_size=30),
    }
)
SMALL = st.integers(-3, 6) | JSON  # a valid max_tokens stays small: the test stays fast
BODY = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(MESSAGE, max_size=3) | JSON,
        "max_tokens": SMALL,
        "temperature": st.floats(-1, 3) | JSON,
        "top_p": st.floats(-1, 2) | JSON,
        "stop": st.lists(st.text(max_size=3), max_size=5) | JSON,
        "stream": st.booleans() | JSON,
        "model": st.just("tiny-lora") | JSON,
        "seed": st.integers() | JSON,
        "n": st.integers(0, 2) | JSON,
    },
)


@pytest.fixture(scope="module")
def fuzz_url(start_server):
    """A server whose answers default to 4 tokens: an accidentally valid body is answered fast."""
    from fa_adapt.generation import GenerationConfig

    with start_server(generation=GenerationConfig(max_new_tokens=4)) as url:
        yield url


@settings(max_examples=60, deadline=None, derandomize=True)
@given(body=BODY | JSON)
def test_random_json_bodies_get_4xx_or_an_answer(fuzz_url, body):
    response = post(fuzz_url, body)
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    health = httpx.get(fuzz_url + "/health").json()
    assert health["status"] == "ok"


def test_curl_style_bodies_are_read_as_json(server_url):
    """`curl -d '{...}'` sends form-urlencoded: the body is still read as the JSON it is."""
    body = json.dumps({"messages": USER, "max_tokens": 2})
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert httpx.post(server_url + "/v1/chat/completions", content=body, headers=form).status_code == 200
    assert_error(httpx.post(server_url + "/v1/chat/completions", content="a=1", headers=form), 400)
