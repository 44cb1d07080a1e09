"""The page at / in a real headless browser (Debian's chromium driven by playwright), with a screenshot.

Without /usr/bin/chromium the test FAILS in CI (CI=true: .ci/run installs it, so a missing browser is a broken
install, not a reason to pass) and is SKIPPED with a loud reason on a developer's machine, where the rest of the
suite should still run; `apt-get install -y chromium` makes it run there too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip():
    if Path(CHROMIUM).is_file():
        return
    message = (
        f"BROWSER TEST NOT RUN: no chromium at {CHROMIUM}; install it with `apt-get install -y chromium`"
    )
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run it: .ci/run installs chromium)")
    pytest.skip(message)


@pytest.mark.slow  # starting chromium takes 5-15 s on 2 shared cores; CI runs the slow tests too
def test_page_lists_adapters_and_draws_probability_bars(make_app, adapter_runs, tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    app, registry = make_app({"sentiment": adapter_runs["lora"], "three": adapter_runs["lora3"]})
    out = Path(os.environ.get("PEFTKIT_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    text = "a witty and moving film"
    with running_server(app) as url, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#adapters li[data-name='three']")
            items = page.locator("#adapters li")
            assert items.count() == 2
            assert page.locator("li[data-name='three'] .labels span").all_inner_texts() == [
                "neg",
                "pos",
                "meh",
            ]
            assert "base " in page.inner_text("#base") and "2 adapter(s)" in page.inner_text("#base")
            assert page.locator("li[data-name='sentiment'] details pre").count() == 1  # the adapter card
            page.fill("#text", text)
            page.click("#classify")
            page.wait_for_selector("#results section[data-adapter='three'] .bar")
            page.wait_for_selector("#results section[data-adapter='sentiment'] .bar")
            page.screenshot(path=str(out / "serve-page.png"), full_page=True)
            shown = {
                adapter: {
                    bar.get_attribute("data-label"): (
                        float(bar.get_attribute("data-probability")),
                        bar.evaluate(
                            "b => b.getBoundingClientRect().width / b.parentElement.getBoundingClientRect().width"
                        ),
                    )
                    for bar in page.locator(f"section[data-adapter='{adapter}'] .bar").all()
                }
                for adapter in ("sentiment", "three")
            }
        finally:
            context.close()
    for adapter, labels in (("sentiment", ["neg", "pos"]), ("three", ["neg", "pos", "meh"])):
        want = registry.adapter_set.predict(registry.get(adapter).name, [text])[0]["probabilities"]
        assert set(shown[adapter]) == set(labels)
        for label, (probability, width) in shown[adapter].items():
            assert probability == pytest.approx(want[label], abs=1e-5)
            assert width == pytest.approx(probability, abs=0.01)  # the bar is as long as the probability
    png = (out / "serve-page.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
