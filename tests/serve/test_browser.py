"""The page at `/` in a real headless Chromium (Debian's, driven by selenium through its chromedriver).

It types a Persian prompt, watches the streamed answer grow in the page, keeps the conversation
across turns, resets it, uploads a real photo and sees its caption, and shows the server's error
for a file that is no image. It skips only where Chromium or its driver is not installed.

Run as a script it takes the docs' screenshot of a running server instead:
    adapt serve &   # the embedded Gemma 3 270M and the shipped captioner
    python tests/serve/test_browser.py http://127.0.0.1:8000 docs/images/serve.png PHOTO.jpg
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PERSIAN_PROMPT = "یک داستان کوتاه بگو"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)

# Records what the page does, from inside the page: every change of the last answer bubble (its
# length and when), and the JSON body of every chat request the page sends.
WATCH_JS = """
window.__updates = [];
window.__chatBodies = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('#messages .msg.assistant');
  const last = bubbles[bubbles.length - 1];
  if (last) window.__updates.push([last.textContent.length, performance.now()]);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
const realFetch = window.fetch;
window.fetch = (url, init) => {
  if (String(url).includes('/v1/chat/completions')) window.__chatBodies.push(JSON.parse(init.body));
  return realFetch(url, init);
};
"""


def start_browser(width: int = 1280, height: int = 900):
    """A headless Debian Chromium under its chromedriver (never a downloaded browser or driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # containers and CI run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        f"--window-size={width},{height}",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # the page itself gets width x height (--window-size counts the window's frame too)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


def open_page(driver, url: str, timeout: float = 30) -> None:
    """Load the page and wait until it has asked the server for its models."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url.rstrip("/") + "/")
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("id", "status").text in ("ready", "server not reachable")
    )
    assert driver.find_element("id", "status").text == "ready", _error_text(driver)


def ask(driver, prompt: str, max_tokens: int, timeout: float = 120) -> str:
    """Type `prompt`, press Enter and wait for the streamed answer to finish; the answer's text."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    field = driver.find_element("id", "max-tokens")
    field.clear()
    field.send_keys(str(max_tokens))
    before = len(driver.find_elements("css selector", "#messages .msg.assistant"))
    driver.find_element("id", "prompt").send_keys(prompt, Keys.ENTER)
    WebDriverWait(driver, timeout).until(
        lambda d: (
            len(d.find_elements("css selector", "#messages .msg.assistant")) > before
            and d.find_element("id", "send").is_enabled()
        )
    )
    assert not driver.find_element("id", "error").is_displayed(), _error_text(driver)
    bubble = driver.find_elements("css selector", "#messages .msg.assistant")[-1]
    return bubble.get_property("textContent")  # exactly what streamed in (.text trims whitespace)


def caption(driver, image: Path, timeout: float = 60) -> str:
    """Choose `image` in the file box and wait for the caption (or an error) to show."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", "image").send_keys(str(image.resolve()))
    WebDriverWait(driver, timeout).until(
        lambda d: (
            d.find_element("id", "caption").text not in ("", "…")
            or d.find_element("id", "error").is_displayed()
        )
    )
    return driver.find_element("id", "caption").text


def _error_text(driver) -> str:
    return "page error: " + driver.find_element("id", "error").text


@pytest.fixture(scope="module")
def page(request):
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "no Chromium / chromedriver installed (Debian: apt-get install chromium chromium-driver); "
            f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}"
        )
    server_url = request.getfixturevalue("server_url")  # only now: no server started just to skip
    driver = start_browser()
    try:
        open_page(driver, server_url)
        driver.execute_script(WATCH_JS)
        yield driver
    finally:
        driver.quit()


def test_persian_prompt_streams_right_to_left(page, server_url):
    import httpx

    page.execute_script("window.__updates = []")
    answer = ask(page, PERSIAN_PROMPT, max_tokens=40)
    assert answer.strip(), "the answer bubble stayed empty"
    # the streamed pieces add up to the answer the API gives in one piece (greedy: the same tokens)
    sent = page.execute_script("return window.__chatBodies")[-1]
    whole = httpx.post(
        server_url.rstrip("/") + "/v1/chat/completions", json={**sent, "stream": False}, timeout=120
    )
    assert whole.status_code == 200, whole.text
    assert answer == whole.json()["choices"][0]["message"]["content"]
    lengths = [n for n, _ in page.execute_script("return window.__updates") if n > 0]
    # streamed: the bubble showed the answer in more than one step, each longer than the last
    assert len(set(lengths)) > 1, f"the answer appeared at once, not streamed: lengths {lengths}"
    assert lengths == sorted(lengths) and lengths[-1] == len(answer), lengths
    user = page.find_elements("css selector", "#messages .msg.user")[-1]
    assert user.text == PERSIAN_PROMPT
    assert user.get_attribute("dir") == "auto"
    assert page.execute_script("return getComputedStyle(arguments[0]).direction", user) == "rtl"
    assert page.find_element("id", "prompt").get_attribute("dir") == "auto"
    assert sent["stream"] is True and sent["max_tokens"] == 40
    assert sent["messages"] == [{"role": "user", "content": PERSIAN_PROMPT}]


def test_conversation_is_kept_then_reset(page):
    first = ask(page, "سلام", max_tokens=8)
    ask(page, "ممنون", max_tokens=8)
    sent = page.execute_script("return window.__chatBodies")[-1]["messages"]
    assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "user"]
    assert sent[-3:] == [
        {"role": "user", "content": "سلام"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "ممنون"},
    ]
    page.find_element("id", "reset").click()
    assert page.find_elements("css selector", "#messages .msg") == []
    ask(page, "سلام", max_tokens=4)
    assert page.execute_script("return window.__chatBodies")[-1]["messages"] == [
        {"role": "user", "content": "سلام"}
    ]


def test_reset_mid_stream_frees_the_slot(page, server_url):
    import httpx
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    health = f"{server_url.rstrip('/')}/health"
    cancelled = httpx.get(health, timeout=10).json()["cancelled"]
    field = page.find_element("id", "max-tokens")
    field.clear()
    field.send_keys("3000")  # far longer than the wait below: the answer is still streaming at reset
    page.find_element("id", "prompt").send_keys(PERSIAN_PROMPT, Keys.ENTER)
    WebDriverWait(page, 60).until(
        lambda d: (
            d.find_elements("css selector", "#messages .msg.assistant")
            and d.find_elements("css selector", "#messages .msg.assistant")[-1].text
        )
    )
    assert not page.find_element("id", "send").is_enabled(), "the answer ended before reset was pressed"
    page.find_element("id", "reset").click()
    assert page.find_elements("css selector", "#messages .msg") == []
    assert not page.find_element("id", "error").is_displayed(), _error_text(page)
    # the page closed the stream, so the server stops that row and its slot is free again
    WebDriverWait(page, 30, poll_frequency=0.2).until(
        lambda _: (h := httpx.get(health, timeout=10).json())["in_flight"] == 0 and h["cancelled"] > cancelled
    )
    assert page.find_element("id", "send").is_enabled()


def test_refused_chat_shows_the_servers_error_and_is_not_kept(page):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page.find_element("id", "reset").click()
    field = page.find_element("id", "max-tokens")
    field.clear()
    field.send_keys("100000")  # above the server's per-answer limit: a 400 naming max_tokens
    page.find_element("id", "prompt").send_keys("سلام", Keys.ENTER)
    WebDriverWait(page, 30).until(lambda d: d.find_element("id", "error").is_displayed())
    error = page.find_element("id", "error").text
    assert error.startswith("chat: 400") and "max_tokens" in error, error
    assert "failed" in page.find_elements("css selector", "#messages .msg.assistant")[-1].get_attribute(
        "class"
    )
    ask(page, "ممنون", max_tokens=4)  # the next turn clears the error; the refused one was not kept
    assert page.execute_script("return window.__chatBodies")[-1]["messages"] == [
        {"role": "user", "content": "ممنون"}
    ]


def test_photo_upload_shows_its_caption(page, server_url, photo):
    import httpx

    shown = caption(page, photo)
    assert not page.find_element("id", "error").is_displayed(), _error_text(page)
    assert page.execute_script("return document.getElementById('preview').naturalWidth") > 0
    # the page shows what the API answers for the same file
    with photo.open("rb") as f:
        direct = httpx.post(server_url.rstrip("/") + "/v1/captions", files={"file": f}, timeout=60)
    assert direct.status_code == 200, direct.text
    assert shown == direct.json()["caption"] and len(shown.split()) >= 2


def test_not_an_image_shows_the_servers_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    caption(page, notes)
    error = page.find_element("id", "error")
    assert error.is_displayed() and error.text.startswith("caption: 400"), error.text


def _screenshot(url: str, out: str, photo: str) -> None:
    """A real session for the docs: two Persian turns with the served model and a captioned photo."""
    driver = start_browser(1200, 960)
    try:
        open_page(driver, url)
        for prompt in ("ملکه الیزابت کیست؟", "یک شعر فارسی بنویسید"):
            answer = ask(driver, prompt, max_tokens=40, timeout=600)
            print(json.dumps({"prompt": prompt, "answer": answer}, ensure_ascii=False))
        print(json.dumps({"caption": caption(driver, Path(photo))}))
        bottom = driver.execute_script("return document.querySelector('main').getBoundingClientRect().bottom")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    from PIL import Image

    # cropped below the page, 256 colours: a small file for the docs
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    shot = shot.crop((0, 0, shot.width, min(shot.height, int(bottom) + 16)))
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    _screenshot(*sys.argv[1:])
