"""report.html as a reader sees it: rendered by headless Chromium (the machine's own, never a downloaded one)."""

from pathlib import Path

import pytest

from r1lite.report import EVAL_TITLE, write_report
from tests.test_report import EVAL_JSON, PNG_MAGIC, make_run_dir

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# Offline and quiet: without the background-networking flags Chromium reaches for the network at start.
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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a synthetic run with an eval.json, open in a 1200 px wide page; with the PNGs written and
    every URL the page requested."""
    run_dir = make_run_dir(tmp_path_factory.mktemp("run"), with_eval=True)
    written = write_report(run_dir)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(written["html"].as_uri(), wait_until="load")
        yield page, written, requested
        browser.close()


def _first_column(page, table_id: str) -> list[str]:
    return page.locator(f"#{table_id} tbody tr td:first-child").all_inner_texts()


def _top(page, selector: str) -> float:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box["y"]


def test_every_image_loads_and_shows(report):
    page, written, _ = report
    pngs = [path for name, path in written.items() if name not in ("markdown", "html")]
    images = page.locator("img")
    assert images.count() == len(pngs)
    for i in range(images.count()):
        image = images.nth(i)
        natural_width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
        box = image.bounding_box()
        alt = image.get_attribute("alt")
        assert natural_width > 0, f"{alt}: not decoded"
        assert image.is_visible() and box is not None, f"{alt}: not visible"
        assert box["width"] >= 300 and box["height"] >= 150, f"{alt}: drawn at {box['width']}x{box['height']}"


def test_before_after_and_metrics_tables_have_their_rows(report):
    page, _, _ = report
    header = page.locator("#eval-table thead th").all_inner_texts()
    assert header == ["metric", "before (base)", "after (adapter)", "difference"]
    expected = [k for k in EVAL_JSON["base"]["metrics"] if k not in ("n", "num_samples")]
    assert _first_column(page, "eval-table") == expected
    format_row = page.locator("#eval-table tbody tr", has_text="format_strict").first.locator("td").all_inner_texts()
    assert format_row == ["format_strict", "0.0%", "90.0%", "+90.0 pp"]
    metrics = _first_column(page, "metrics-table")
    assert metrics[:2] == ["reward", "reward_std"]
    assert {"completions/mean_length", "step_time", "eval/accuracy_strict"} <= set(metrics)


def test_outcome_comes_first_and_config_last(report):
    page, _, _ = report
    assert page.locator("#evaluation h2").inner_text() == EVAL_TITLE
    order = ["#evaluation", "#throughput", "#headline", "#samples", "#metrics", "#plots", "#config"]
    tops = [_top(page, selector) for selector in order]
    assert tops == sorted(tops) and len(set(tops)) == len(tops), dict(zip(order, tops, strict=True))
    assert "tokens/s" in page.locator("#throughput").inner_text()


def test_page_loads_nothing_but_itself(report):
    page, written, requested = report
    assert requested and all(url == written["html"].as_uri() or url.startswith("data:") for url in requested)


def test_screenshot_is_a_png(report, tmp_path):
    page, _, _ = report
    path = tmp_path / "report.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_config_is_folded_until_opened(report):
    page, _, _ = report
    details = page.locator("#config details")
    config = details.locator("pre")
    assert details.evaluate("d => d.open") is False
    assert not config.is_visible()
    details.locator("summary").click()
    assert config.is_visible() and "run_name: synthetic-run" in config.inner_text()
    details.locator("summary").click()  # folded again for any later look at the page
    assert not config.is_visible()
