"""The status page on the admin port, seen by a browser: a sidecar with a simulated GPU and cost prices
in front of a streaming chat model, under traffic, opened in Debian's headless Chromium.

Chromium dumps the DOM after the page's scripts ran (every chart drawn with data, the GPU listed,
the alerts table present, landmarks, headings and labels in place) and takes screenshots, light and
dark, into `test-artifacts/status-page/` (git-ignored), which are decoded and checked for content.
Chromium runs as a subprocess through asyncio, so the sidecar keeps serving in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import RunningSidecar, SidecarFactory
from tests.support.tools import require_tool, serve_on_loopback
from tests.support.upstream import TestUpstream

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "status-page"
CHROMIUM_TIMEOUT_S = 40.0
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--disable-dev-shm-usage",
)  # fmt: skip
WINDOW = (1280, 3600)
PRICES = {"default": {"input_per_1k": 0.015, "output_per_1k": 0.025, "per_request": 0.001}}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
SECTIONS = {"traffic": "Traffic", "gpus": "GPUs", "slos": "SLOs", "alerts": "Alerts", "audit": "Audit pipeline",
            "cost": "Cost"}  # fmt: skip
# Every chart the page draws with this sidecar's parts on; each must have a line with points.
CHARTS = ("requests", "errors", "latency", "ttft", "tokens", "gpu-util", "gpu-memory", "gpu-temperature",
          "gpu-power", "slo-availability-budget", "slo-availability-burn", "audit-accepted", "audit-problems",
          "audit-spool", "cost")  # fmt: skip


# --- a streaming chat model ----------------------------------------------------------------------


class ChatModel:
    """An OpenAI-compatible upstream: chat completions, streamed with usage when asked, and /status/{code}."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/status/{code}", self.status)
        self.runner, port = await serve_on_loopback(app)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status\n")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "m")
        if not body.get("stream"):
            return web.json_response({"model": model, "choices": [{"message": {"content": "ok"}}],
                                      "usage": {"prompt_tokens": 20, "completion_tokens": 4}})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(6):
            await asyncio.sleep(0.005)
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": "tok"}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"model": model, "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 6}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


@pytest.fixture
async def model() -> AsyncIterator[ChatModel]:
    server = ChatModel()
    await server.start()
    yield server
    await server.stop()


async def send_traffic(proxy_url: str, stop: asyncio.Event) -> None:
    """Streamed chat calls, one in ten answered 500, until told to stop."""
    request = {"model": "llama", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with aiohttp.ClientSession() as client:
        sent = 0
        while not stop.is_set():
            if sent % 10 == 9:
                async with client.get(f"{proxy_url}/status/500") as response:
                    await response.read()
            else:
                async with client.post(f"{proxy_url}/v1/chat/completions", json=request) as response:
                    await response.read()
            sent += 1
            await asyncio.sleep(0.05)


async def status_json(sidecar: RunningSidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{sidecar.admin_url}/-/status.json") as response:
            assert response.status == 200
            return await response.json()


def populated(data: dict[str, Any]) -> bool:
    """Enough history for every chart to draw a line: two closed request slots with streamed calls,
    two GPU steps, and two audit, cost and SLO samples."""
    requests = data["requests"].get("series", {})
    ttft = [v for v in requests.get("ttft_p50_s", []) if v is not None]
    gpus = data["gpu"].get("gpus", [])
    return (
        len(ttft) >= 2
        and bool(gpus) and len(gpus[0]["series"]["t"]) >= 2
        and len([v for v in data["audit"]["series"]["accepted_per_s"] if v is not None]) >= 2
        and len(data["cost"]["series"]["t"]) >= 2
        and len(data["slo"]["slos"][0]["series"]["t"]) >= 2
    )  # fmt: skip


# --- Chromium ------------------------------------------------------------------------------------


async def chromium(binary: str, profile: Path, *args: str) -> tuple[bytes, str]:
    """Run headless Chromium once; its stdout and stderr. Killed and failed past CHROMIUM_TIMEOUT_S."""
    process = await asyncio.create_subprocess_exec(
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CHROMIUM_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"chromium {' '.join(args)} did not finish within {CHROMIUM_TIMEOUT_S}s") from None
    log = stderr.decode(errors="replace")
    assert process.returncode == 0, f"chromium exited {process.returncode}: {log[-2000:]}"
    return stdout, log


async def dump_dom(binary: str, profile: Path, url: str) -> Element:
    """The DOM after the page's scripts ran; fails on any script error or CSP refusal in the console."""
    # Virtual time runs the page's first fetch and drawing, then stops before the next poll matters.
    html, log = await chromium(binary, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=4000",
                               "--dump-dom", url)  # fmt: skip
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Refused" in line], "\n".join(console)
    return parse_html(html.decode())


async def screenshot(binary: str, profile: Path, url: str, path: Path, *extra: str) -> bytes:
    path.unlink(missing_ok=True)
    await chromium(binary, profile, "--virtual-time-budget=4000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                   f"--screenshot={path}", *extra, url)  # fmt: skip
    assert path.is_file(), f"chromium wrote no screenshot at {path}"
    return path.read_bytes()


# --- the dumped DOM ------------------------------------------------------------------------------

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})  # fmt: skip


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)
    parent: Element | None = None

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [node for node in self.iter()
                if (tag is None or node.tag == tag) and all(node.attrs.get(k.replace("_", "-")) == v
                                                            for k, v in attrs.items())]  # fmt: skip

    def find(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in the page"
        return found[0]

    def by_id(self, element_id: str) -> Element:
        return self.find(id=element_id)

    @property
    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text for child in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Element(tag, {name: value or "" for name, value in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {name: value or "" for name, value in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_html(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def line_points(path: Element) -> int:
    """Points on an SVG line's path (`M x,y L x,y ...`)."""
    return len(re.findall(r"[ML]-?[\d.]+,-?[\d.]+", path.attrs.get("d", "")))


# --- the screenshot ------------------------------------------------------------------------------


def png_pixels(data: bytes, max_rows: int) -> tuple[int, int, list[bytes], int]:
    """(width, height, the first `max_rows` rows unfiltered, bytes per pixel) of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, bytearray(), None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert header is not None, "PNG without IHDR"
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if color_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompressobj().decompress(bytes(idat), (stride + 1) * min(height, max_rows))
    rows: list[bytes] = []
    previous = bytes(stride)
    for index in range(min(height, max_rows)):
        start = index * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:  # Up
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = rows[-1]
    return width, height, rows, bpp


def colours(rows: list[bytes], bpp: int) -> Counter[tuple[int, int, int]]:
    counted: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for x in range(0, len(row), bpp):
            counted[(row[x], row[x + 1], row[x + 2])] += 1
    return counted


def near(counted: Counter[tuple[int, int, int]], rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    return sum(n for colour, n in counted.items()
               if all(abs(c - t) <= tolerance for c, t in zip(colour, rgb, strict=True)))  # fmt: skip


# --- the tests -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def traffic(sidecar: RunningSidecar) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(send_traffic(sidecar.url, stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def wait_for_data(sidecar: RunningSidecar, ready: Callable[[dict[str, Any]], bool],
                        timeout: float) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        data = await status_json(sidecar)
        if ready(data):
            return data
        assert time.monotonic() < deadline, f"the status data did not fill within {timeout}s: {json.dumps(data)[:3000]}"
        await asyncio.sleep(0.5)


async def test_status_page_renders_populated_charts_in_headless_chromium(
    model: ChatModel, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    binary = require_tool("chromium")
    sidecar = await make_sidecar(
        model.url, gpu__nvml__enabled=True, gpu__nvml__simulate=1, gpu__nvml__interval="500ms",
        gpu__cost__hardware_price=30000, gpu__cost__cloud_prices=PRICES,
    )  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = f"{sidecar.admin_url}/"
    async with traffic(sidecar):
        data = await wait_for_data(sidecar, populated, timeout=40)
        light_png, dark_png, document = await asyncio.gather(
            screenshot(binary, tmp_path / "light", page, ARTIFACTS / "status-light.png"),
            screenshot(binary, tmp_path / "dark", page, ARTIFACTS / "status-dark.png", "--force-dark-mode"),
            # As an alert notification links to it (generatorURL): that alert highlighted.
            dump_dom(binary, tmp_path / "dom", f"{page}?alert=SidecarHighErrorRate"),
        )
    (ARTIFACTS / "status-dom.html").write_text(render(document))
    (ARTIFACTS / "status.json").write_text(json.dumps(data, indent=1))
    body = document.find("body")
    assert "data-rendered" in body.attrs, "the page's script did not draw (no data-rendered on <body>)"

    # Landmarks and headings: one h1, an h2 per section labelling it, a named nav, main, footer.
    assert document.find("html").attrs.get("lang") == "en"
    assert len(document.find_all("h1")) == 1 and "Sidecar status" in document.find("h1").text
    assert document.find("header") and document.find("footer") and document.find("nav").attrs.get("aria-label")
    main = document.find("main")
    assert main.attrs.get("id") == "main" and main.attrs.get("tabindex") == "-1"
    for section_id, heading in SECTIONS.items():
        section = document.by_id(section_id)
        assert section.tag == "section"
        assert document.by_id(section.attrs["aria-labelledby"]).text == heading
        note = section.find(data_note="")
        assert "hidden" in note.attrs or "could not be drawn" not in note.text, note.text
    levels = [int(node.tag[1]) for node in main.iter() if re.fullmatch(r"h[1-6]", node.tag)]
    assert levels[0] == 2 and all(b <= a + 1 for a, b in zip(levels, levels[1:], strict=False)), levels  # none skipped

    # Keyboard: a skip link to main first, controls are real buttons, the section links are links.
    first_link = document.find("a")
    assert first_link.attrs["href"] == "#main" and "skip-link" in first_link.classes()
    pause, refresh = document.by_id("pause"), document.by_id("refresh")
    assert pause.tag == refresh.tag == "button" and pause.attrs.get("aria-pressed") == "false"
    assert [a.attrs["href"] for a in document.find("nav").find_all("a")] == [f"#{s}" for s in SECTIONS]
    assert document.by_id("connection").text == "", "the page could not fetch its data"

    # Every chart: an image with a title and a description, a line with points, a hidden data table.
    drawn = {figure.attrs["data-chart"]: figure for figure in document.find_all("figure")
             if "chart" in figure.classes()}  # fmt: skip
    assert set(CHARTS) <= set(drawn), f"charts missing: {set(CHARTS) - set(drawn)}"
    for name, figure in drawn.items():
        image = figure.find("svg", role="img")
        title = figure.by_id(image.attrs["aria-labelledby"])
        desc = figure.by_id(image.attrs["aria-describedby"])
        assert title.tag == "title" and title.text and desc.tag == "desc"
        assert "latest" in desc.text, f"{name}: {desc.text}"
        most = max(line_points(path) for path in image.find_all("path") if "line" in path.classes())
        assert most >= 2, f"chart {name} has no line of two points or more"
        table = figure.find("table")
        assert "visually-hidden" in table.classes() and table.find("caption").text
        assert all(cell.attrs.get("scope") == "col" for cell in table.find("thead").find_all("th"))

    # The values say what the traffic was.
    request_summary = drawn["requests"].find("desc").text
    rate = float(re.search(r"All requests: latest ([\d.]+) requests/s", request_summary).group(1))
    assert rate > 0, request_summary
    assert re.search(r"P95: latest [\d.]+ ms", drawn["ttft"].find("desc").text)
    # The simulated H100 is labelled as such, and works only while requests are at the model server.
    utilisation = re.search(r"GPU 0 \(simulated\): latest ([\d.]+) %, lowest ([\d.]+) %",
                            drawn["gpu-util"].find("desc").text)  # fmt: skip
    assert utilisation and 0 < float(utilisation.group(1)) < 87, drawn["gpu-util"].find("desc").text
    gpu_row = document.by_id("gpu-table").find("tr", data_gpu="0")
    assert "NVIDIA H100 80GB HBM3" in gpu_row.text and "ok" in gpu_row.text
    assert [span.text for span in gpu_row.find_all("span") if "badge-simulated" in span.classes()] == ["simulated"]
    notice = document.by_id("gpus").find(data_notice="")
    assert "hidden" not in notice.attrs and "Simulated GPU" in notice.text
    # Minutes of a 30-day SLO: the budget as time spent against time allowed, no percentage of the month.
    slo_tiles = document.by_id("slo-availability").find("dl").text
    assert "Too early for a percentage" in slo_tiles and "of 30 d observed" in slo_tiles
    assert "Budget spent so far" in slo_tiles and "Error budget remaining" not in slo_tiles
    # Nothing the script meant to leave out is written as text.
    words = re.findall(r"null|undefined|NaN", main.text)  # a stray value sits flush against its neighbour
    assert not words, f"stray {words} on the page"
    # One in ten answered 500: the error-rate alert is pending, highlighted as the link asked.
    alerts = document.by_id("alerts-table")
    assert [th.text for th in alerts.find("thead").find_all("th")] == ["Alert", "Severity", "State", "Since",
                                                                      "Value", "Summary"]  # fmt: skip
    (row,) = [row for row in alerts.find_all("tr")
              if row.find_all("th") and row.find("th").text == "SidecarHighErrorRate"]  # fmt: skip
    assert row.attrs.get("data-state") == "pending" and "highlight" in row.classes()
    assert "of requests are failing" in row.text
    audit_tiles = document.by_id("audit").find("dl").text
    assert "Sink (file)" in audit_tiles and "up" in audit_tiles
    cost_tiles = document.by_id("cost").find("dl").text
    assert "months" in cost_tiles  # a payback estimate
    assert "Idle GPU, not charged" in cost_tiles and "gpu.idle_power: unattributed" in cost_tiles

    # The screenshots show the charts: many colours, light and dark backgrounds, the series' colours.
    for png, background, series_colour in ((light_png, (255, 255, 255), (9, 105, 218)),
                                           (dark_png, (13, 17, 23), (88, 166, 255))):  # fmt: skip
        width, height, rows, bpp = png_pixels(png, max_rows=1300)
        assert (width, height) == WINDOW
        counted = colours(rows, bpp)
        assert len(counted) >= 50, f"only {len(counted)} colours: a blank page?"
        assert near(counted, background, 2) > width * len(rows) * 0.2, "not the expected page background"
        assert near(counted, series_colour) > 200, f"no {series_colour} line drawn"


def render(node: Element | str) -> str:
    """The parsed DOM written back (for the artefacts folder)."""
    if isinstance(node, str):
        return node
    inner = "".join(render(child) for child in node.children)
    if node.tag == "#document":
        return inner
    attrs = "".join(f' {name}="{value}"' for name, value in node.attrs.items())
    return f"<{node.tag}{attrs}>" if node.tag in _VOID else f"<{node.tag}{attrs}>{inner}</{node.tag}>"


async def test_each_part_that_is_off_says_so_on_the_page(
    upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    binary = require_tool("chromium")
    sidecar = await make_sidecar(upstream.url, rules__enabled=False, audit__enabled=False)  # and no GPU
    data = await status_json(sidecar)
    for section in ("requests", "gpu", "slo", "alerts", "audit", "cost"):
        assert data[section]["available"] is False, section
    document = await dump_dom(binary, tmp_path / "off", f"{sidecar.admin_url}/")
    assert "data-rendered" in document.find("body").attrs
    expected = {
        "traffic": "rules are off (rules.enabled: false)",
        "gpus": "GPU readings are off (gpu.nvml.enabled and gpu.dcgm_exporter.enabled are false)",
        "slos": "rules are off",
        "alerts": "rules are off",
        "audit": "the audit trail is off (audit.enabled: false)",
        "cost": "cost is priced from GPU readings, which are off",
    }
    for section_id, words in expected.items():
        note = document.by_id(section_id).find(data_note="")
        assert "hidden" not in note.attrs and words in note.text, (section_id, note.text)
        assert not document.by_id(section_id).find_all("svg", role="img")
    assert document.by_id("readiness").text == "Ready"


async def test_no_stray_null_undefined_or_nan_as_the_demo_runs_it(
    upstream: TestUpstream, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    # The demo's parts: a simulated GPU, cloud prices and no hardware price, so some tiles are left out.
    binary = require_tool("chromium")
    sidecar = await make_sidecar(upstream.url, gpu__nvml__enabled=True, gpu__nvml__simulate=1,
                                 gpu__cost__cloud_prices=PRICES)  # fmt: skip
    await wait_for_data(sidecar, lambda data: bool(data["gpu"]["gpus"]), timeout=20)
    document = await dump_dom(binary, tmp_path / "demo", f"{sidecar.admin_url}/")
    main = document.find("main")
    assert "data-rendered" in document.find("body").attrs
    words = re.findall(r"null|undefined|NaN", main.text)  # a stray value sits flush against its neighbour
    assert not words, f"stray {words} on the page"
    assert "no hardware price" in document.by_id("cost").find(data_note="").text
    assert "Simulated GPU" in document.by_id("gpus").find(data_notice="").text


async def test_root_answers_json_to_clients_that_ask_for_it_and_the_page_to_browsers(
    upstream: TestUpstream, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(upstream.url)
    async with aiohttp.ClientSession() as client:
        for accept in ("application/json", "*/*", "", None):  # None: aiohttp's own Accept
            headers = {"Accept": accept} if accept is not None else {}
            async with client.get(f"{sidecar.admin_url}/", headers=headers) as response:
                assert response.status == 200 and response.content_type == "application/json", accept
                index = await response.json()
                assert {"/metrics", "/-/status.json", "/-/index"} <= set(index["endpoints"])
                assert response.headers["Vary"] == "Accept"
        async with client.get(f"{sidecar.admin_url}/-/index", headers={"Accept": BROWSER_ACCEPT}) as response:
            assert response.content_type == "application/json" and "/metrics" in (await response.json())["endpoints"]
        async with client.get(f"{sidecar.admin_url}/", headers={"Accept": BROWSER_ACCEPT}) as response:
            assert response.status == 200 and response.content_type == "text/html"
            page = await response.text()
            assert '<main id="main"' in page and "-/static/status.js" in page
            # Nothing inline and nothing from elsewhere.
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        for name, content_type in (("status.js", "text/javascript"), ("status.css", "text/css"),
                                   ("status.html", "text/html")):  # fmt: skip
            async with client.get(f"{sidecar.admin_url}/-/static/{name}") as response:
                assert response.status == 200 and response.content_type == content_type, name
        for path in ("/-/static/nothing.js", "/-/static/..%2F..%2Fapp.py", "/-/static/__init__.py"):
            async with client.get(f"{sidecar.admin_url}{path}") as response:
                assert response.status == 404, path
        async with client.get(f"{sidecar.admin_url}/-/status.json", headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
            data = await response.json()
    assert data["service"]["upstream"] == upstream.url and data["requests"]["available"]
    # The page's sources are the script and stylesheet on the admin port only.
    assert not re.search(r"""(src|href)="(https?:)?//""", page)
    assert upstream.requests == []
