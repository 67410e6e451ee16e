"""The report in real headless Chromium (Playwright): no console errors, plots drawn, tooltips work.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package (the ``test`` extra); never ``playwright install``: the system browser is used.
Set ``ATTNRHYTHM_SCREENSHOT_DIR`` to keep the screenshots somewhere other than tmp_path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from attnrhythm.views.report import write_report

# how long a view may take to render after navigation on a loaded 2-core CI machine
RENDER_TIMEOUT_MS = 30_000

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from test_report import make_record

    records = [
        make_record(4000, key="long", maps_span=(0, 128), reward=1.0, answer=42),
        make_record(80, seed=1, key="no-maps", maps_span=None, receiver=False, reward=0.0),
        make_record(120, seed=2, key="third", maps_span=(20, 84)),
    ]
    return write_report(records, tmp_path_factory.mktemp("report") / "report.html")


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("ATTNRHYTHM_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    def console(message) -> None:
        if message.type in ("error", "warning"):
            errors.append(f"console.{message.type}: {message.text}")

    def request(req) -> None:
        if not req.url.startswith(("file:", "data:")):
            errors.append(f"network: {req.url}")

    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", request)
    page.goto(url)
    page.wait_for_function("window.__attnrhythm && window.__attnrhythm.paintedMs !== null")
    return page, errors


INK = """(sel) => Array.from(document.querySelectorAll(sel)).map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let k = 0; k < d.length; k += 4) {
    if (d[k + 3] > 0 && (d[k] < 235 || d[k + 1] < 235 || d[k + 2] < 235)) ink++;
  }
  return ink / (c.width * c.height);
})"""


def test_long_trace_renders_fast_with_tooltips(browser, report, tmp_path):
    page, errors = _open(browser, report.as_uri() + "#trace-0")
    timing = page.evaluate("window.__attnrhythm")
    assert timing["paintedMs"] < 5000, timing  # first frame after rendering (about 0.5 s on 2 cores)
    assert page.locator(".strip span").count() == 4000
    assert page.locator(".strip span.a, .strip span.d").count() > 1000
    # every canvas of the trace view has ink: curves, two maps, head picture
    ink = page.evaluate(INK, "#trace canvas:not(.over)")
    assert len(ink) == 4 and min(ink) > 0.01, ink
    # hover a token: tooltip with its metrics and every gamma; the curve crosshair follows
    page.locator(".strip span").nth(3).hover()
    tip = page.locator("#tip")
    assert tip.is_visible()
    text = tip.inner_text()
    for needle in ("#3", "WAAD", "FAI", "FAI receiver", "entropy", "coupled", "global", "none"):
        assert needle in text, text
    assert page.evaluate(INK, "#trace canvas.over")[0] > 0
    # hover the curves: tooltip for the token under the cursor, the token is outlined in the strip
    box = page.locator("#trace canvas.over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 40)
    assert tip.is_visible() and "WAAD" in tip.inner_text()
    assert page.locator(".strip span.hl").count() == 1
    # drag to zoom, then the colour-by select and the map scale select re-render without errors
    page.mouse.move(box["x"] + 300, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 500, box["y"] + 60, steps=4)
    page.mouse.up()
    assert "showing tokens" in page.locator("#trace .curves").locator("xpath=..").inner_text()
    page.locator("#trace select").first.select_option("entropy")
    assert page.locator(".strip span[style]").count() > 3000
    page.locator("#trace select").nth(1).select_option("log")
    # hover a map cell
    page.locator("#trace .plot canvas").first.hover(position={"x": 120, "y": 200})
    assert "local heads" in tip.inner_text() and "attention" in tip.inner_text()
    page.locator("#trace .plot canvas").last.hover(position={"x": 60, "y": 40})
    assert "span d =" in tip.inner_text()
    page.screenshot(path=str(_shots(tmp_path) / "report-trace.png"), full_page=True)
    assert errors == []
    page.close()


def test_index_and_navigation(browser, report, tmp_path):
    from playwright.sync_api import expect

    page, errors = _open(browser, report.as_uri())
    rows = page.locator("table.traces tbody tr")
    assert rows.count() == 3
    assert "long" in rows.nth(0).inner_text() and "42" in rows.nth(0).inner_text()
    hist_ink = page.evaluate(INK, "#index canvas")
    assert len(hist_ink) >= 6 and min(hist_ink) > 0.005, hist_ink
    # the corpus head-stability grid (the report's 3 traces share their layers): hover a head
    card = page.locator("#index h3", has_text="Head stability over 3 traces").locator("xpath=..")
    card.locator("canvas").hover(position={"x": 50, "y": 28})
    assert "over 3 traces: local in" in page.locator("#tip").inner_text()
    page.locator("table.traces th", has_text="tokens").click()  # sort ascending by length
    assert "no-maps" in rows.nth(0).inner_text()
    page.screenshot(path=str(_shots(tmp_path) / "report-index.png"), full_page=True)
    page.locator("a", has_text="no-maps").first.click()
    page.wait_for_function("location.hash === '#trace-1'")
    # the trace view renders after the hash change: wait for it rather than read it at once
    expect(page.locator(".strip span")).to_have_count(80, timeout=RENDER_TIMEOUT_MS)
    note = page.locator("#trace .note")
    assert note.is_visible() and "--save-maps" in note.inner_text() and "--model" in note.inner_text()
    assert "FAI (receiver)" not in page.locator("#trace").inner_text()
    page.locator("a", has_text="next").click()
    page.wait_for_function("location.hash === '#trace-2'")
    expect(page.locator(".strip span")).to_have_count(120, timeout=RENDER_TIMEOUT_MS)
    assert "window 20:84" in page.locator("#trace").inner_text()
    assert errors == []
    page.close()


# Records every fillText that would fall outside its canvas (a clipped title or label).
CLIP_SPY = """(() => {
  window.__clippedText = [];
  const P = CanvasRenderingContext2D.prototype, fill = P.fillText;
  P.fillText = function (text, x, y, ...rest) {
    const m = this.getTransform();
    if (!m.b && !m.c && this.canvas.style.width) {
      const w = this.measureText(String(text)).width * m.a;
      const at = m.a * x + m.e;
      const align = this.textAlign;
      const shift = align === "right" || align === "end" ? w : align === "center" ? w / 2 : 0;
      const left = at - shift, right = left + w;
      if (left < -1 || right > this.canvas.width + 1) window.__clippedText.push(String(text));
    }
    return fill.call(this, text, x, y, ...rest);
  };
})();"""


def test_no_clipped_titles_robust_curve_scale_and_correctness(browser, tmp_path):
    from test_report import make_record

    spike = make_record(300, key="spike", answer=26, response="3 x 12 = 36 and 36 - 10 = 26, so 26.")
    spike["metrics"]["fai"][40] = 50 * max(v for v in spike["metrics"]["fai"] if v is not None)
    records = [spike, make_record(90, seed=4, key="a-rather-long-key-" * 4, answer=7, response="it is 8")]
    path = write_report(records, tmp_path / "spike.html")
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.add_init_script(CLIP_SPY)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("window.__attnrhythm && window.__attnrhythm.paintedMs !== null")
    rows = page.locator("table.traces tbody tr")
    assert "yes" in rows.nth(0).locator("td.c-correct").inner_text()
    assert "no" in rows.nth(1).locator("td.c-correct").inner_text()
    assert page.locator("table.traces th", has_text="reference").count() == 1
    page.goto(path.as_uri() + "#trace-0")
    page.wait_for_function("document.querySelector('#trace .curves') !== null")
    # the FAI spike is drawn on the top edge and marked; the rest of the curve keeps its scale
    assert page.locator("#trace .curves").get_attribute("data-clipped") == "FAI (global): 1"
    assert "correct" in page.locator("#trace").inner_text()
    page.goto(path.as_uri() + "#trace-1")
    page.wait_for_function("location.hash === '#trace-1' && !!document.querySelector('#trace .curves')")
    assert page.locator("#trace .curves").get_attribute("data-clipped") == ""
    assert page.evaluate("window.__clippedText") == []
    page.screenshot(path=str(_shots(tmp_path) / "report-spike.png"), full_page=True)
    assert errors == []
    page.close()
