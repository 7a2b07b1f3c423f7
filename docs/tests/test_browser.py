"""The built site renders in headless Chromium: formulas typeset by the vendored KaTeX, no errors.

The site is served on localhost by `http.server` (a free port), Chromium is driven over the
Chrome DevTools protocol (websocket-client), and nothing outside localhost is needed. One
screenshot is kept for people to look at (NSA_DOCS_SCREENSHOT, default build/docs-screenshot.png).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = Path(os.environ.get("NSA_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = Path(os.environ.get("NSA_DOCS_SCREENSHOT", ROOT / "build" / "docs-screenshot.png"))
SCREENSHOT_PAGE = "spec/selection/"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--remote-debugging-port=0", "--window-size=1280,1800",
)
GENERATED_PAGES = ["api/", "api/nsa_spec.reference.select/"]  # pages the hooks write


def written_pages() -> dict[str, bool]:
    """URL path of every hand-written page -> whether its text (code blocks aside) has math."""
    pages = {}
    for md in sorted(DOCS.rglob("*.md")):
        rel = md.relative_to(DOCS)
        if rel.parts[0] in ("assets", "tests", "hooks", "figures"):
            continue
        url = rel.parent.as_posix() + "/" if rel.name == "index.md" else rel.with_suffix("").as_posix() + "/"
        prose = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.S | re.M)
        pages[url.removeprefix("./")] = "$" in prose
    return pages


PAGES = written_pages()
TIMEOUT_S = 20.0

# In the page: how many .arithmatex elements exist, how many hold a rendered .katex, whether the
# KaTeX fonts loaded, and the visible text.
PROBE = """(async () => {
  await document.fonts.ready;
  const math = [...document.querySelectorAll(".arithmatex")];
  return JSON.stringify({
    math: math.length,
    rendered: math.filter((el) => el.querySelector(".katex")).length,
    katexFont: document.fonts.check("16px KaTeX_Main"),
    text: document.body.innerText,
  });
})()"""


class DevTools:
    """A minimal Chrome DevTools protocol client for one page target."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT_S, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> dict:
        """Block until `event` arrives (or has arrived) and return its params."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for message in self.events:
                if message.get("method") == event:
                    return message["params"]
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {event} within {TIMEOUT_S} s")

    def evaluate(self, expression: str) -> object:
        """Evaluate JavaScript in the page, awaiting a promise, and return its value."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        out = []
        for message in self.events:
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                args = (str(a.get("value", a.get("description"))) for a in params["args"])
                out.append("console: " + " ".join(args))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(site_dir: Path) -> Iterator[str]:
    """The built site, served on a free localhost port for the module's tests."""
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """Headless Chromium with a new empty profile, driven over DevTools."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set NSA_CHROMIUM)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not open its DevTools port (exit code {process.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        yield tools
        tools.ws.close()
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_S)


def load(browser: DevTools, url: str) -> dict:
    """Navigate, wait for the load event and for KaTeX, and return the page probe."""
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        probe = json.loads(browser.evaluate(PROBE))
        if probe["rendered"] == probe["math"] or time.monotonic() > deadline:
            return probe
        time.sleep(0.1)


def test_every_written_page_is_checked() -> None:
    assert len(PAGES) >= 15 and "spec/selection/" in PAGES and PAGES["spec/selection/"]


@pytest.mark.parametrize("path", [*PAGES, *GENERATED_PAGES])
def test_page_renders(browser: DevTools, base_url: str, path: str) -> None:
    probe = load(browser, base_url + path)
    if PAGES.get(path):
        assert probe["math"] > 0, f"{path} has math in its source but none on the page"
        assert probe["katexFont"], "the vendored KaTeX fonts did not load"
    missing = probe["math"] - probe["rendered"]
    assert missing == 0, f"{path}: {missing} formulas not typeset"
    for raw in ("$$", "\\(", "\\)", "\\[", "\\]"):
        assert raw not in probe["text"], f"{path} shows raw TeX delimiter {raw!r}"
    assert browser.errors() == []


def test_broken_formula_is_reported(browser: DevTools, base_url: str) -> None:
    """The error path the checks above rely on: KaTeX reports a bad formula on the console."""
    load(browser, base_url + "spec/window/")
    browser.events.clear()
    browser.evaluate(
        'const e = document.createElement("span"); e.textContent = "\\\\(\\\\left( x\\\\)";'
        "document.body.append(e); renderMathInElement(e, {delimiters: "
        '[{left: "\\\\(", right: "\\\\)", display: false}]}); true'
    )
    assert any("KaTeX" in e for e in browser.errors())


def test_screenshot(browser: DevTools, base_url: str) -> None:
    probe = load(browser, base_url + SCREENSHOT_PAGE)
    assert probe["rendered"] == probe["math"] > 0
    shot = browser.call("Page.captureScreenshot", format="png")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert SCREENSHOT.stat().st_size > 10_000
