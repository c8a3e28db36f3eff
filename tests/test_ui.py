"""Trigger from the UI, in a real browser: the Prefect UI of a real `prefect server start`, in
headless Chromium (Debian's, driven by Playwright), starts a run of the served `pipeline`
deployment from its custom-run form with two values changed, and the API shows that run
completed with exactly those parameters.

Screenshots (the form, the submitted run, the completed run) are saved in the test's tmp_path,
and copied into $SEGFLOW_TEST_ARTIFACTS when it is set.
"""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from servers import serve_env, serving, tail, task_runs, wait_for_flow_run

from segflow.config import demo_params

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def form_field(page, label: str):
    """The schema-form property whose own label is `label` (not an enclosing object's)."""
    return page.locator(
        "xpath=//div[contains(@class, 'schema-form-property')]"
        "[./div[contains(@class, 'p-label__header')]//span[contains(@class, 'schema-form-property__label')]"
        f"[normalize-space() = '{label} (Optional)']]"
    )


@pytest.mark.slow
def test_run_started_from_the_ui_form_completes_with_its_parameters(prefect_api, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # pages render slowly while a run trains on the same 2 cores
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    api, prefect_env = prefect_api
    ui = api.removesuffix("/api")
    results, work, log = tmp_path / "results", tmp_path / "work", tmp_path / "serve.log"
    screenshots = tmp_path / "screenshots"
    env = serve_env(prefect_env, tmp_path, SEGFLOW_DEMO="1")  # the demo's settings: U-Net learns in minutes
    expected = demo_params(architectures=["unet"], seed=7, results_uri=str(results), work_dir=str(work))

    with serving(api, env, log) as deployments, sync_playwright() as playwright:
        defaults = demo_params(results_uri=str(results), work_dir=str(work))
        assert deployments["pipeline"]["parameters"] == {"params": defaults.model_dump(mode="json")}
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.new_page()
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{ui}/deployments")
            page.get_by_role("link", name="pipeline", exact=True).click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()

            # The form shows the deployment's defaults; keep unet only and change the seed.
            architectures = form_field(page, "Architectures")
            expect(architectures.locator(".p-tag")).to_have_text(list(defaults.architectures))
            expect(form_field(page, "Epochs").locator("input")).to_have_value(str(defaults.training.epochs))
            expect(form_field(page, "Width").locator("input")).to_have_value(str(defaults.training.width))
            # One tag at a time: a click before the form has re-rendered emits the list it still shows,
            # which puts the tag removed just before back (seen in CI: ['unet', 'segnet'] left).
            kept = list(defaults.architectures)
            for name in defaults.architectures[1:]:
                architectures.locator(".p-tag", has_text=re.compile(f"^{name}$")).locator(".p-tag__dismiss").click()
                kept.remove(name)
                expect(architectures.locator(".p-tag")).to_have_text(kept)
            assert kept == ["unet"]
            seed = form_field(page, "Seed").locator("input")
            expect(seed).to_have_value("0")
            seed.fill("7")
            screenshots.mkdir()
            page.set_viewport_size({"width": 1400, "height": 3300})  # the whole form in one picture
            page.screenshot(path=screenshots / "1-run-form.png")
            page.set_viewport_size({"width": 1400, "height": 1000})

            with page.expect_response(lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST") as created:
                page.get_by_role("button", name="Submit").click()
            assert created.value.status == 201, created.value.text()
            flow_run_id = created.value.json()["id"]
            page.wait_for_url(re.compile(r"/deployments/deployment/[^/?]+\?tab=Runs"))
            expect(page.get_by_text(created.value.json()["name"]).first).to_be_visible()  # in the deployment's runs
            page.screenshot(path=screenshots / "2-submitted.png")

            flow_run = wait_for_flow_run(api, flow_run_id, timeout_s=400, log_path=log)  # 60 steps of U-Net
            task_runs(api, flow_run_id, count=10)  # recorded from events, a moment later
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
            # The run's page: its state, its task runs (the graph) and their logs.
            expect(page.get_by_text("10 Task runs")).to_be_visible()
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            expect(page.get_by_text("train and evaluate unet").first).to_be_visible()
            page.screenshot(path=screenshots / "3-completed.png")
        except Exception:
            screenshots.mkdir(exist_ok=True)
            with contextlib.suppress(Exception):  # keep the first error
                page.screenshot(path=screenshots / "failure.png")
            raise
        finally:
            browser.close()
            if os.environ.get("SEGFLOW_TEST_ARTIFACTS"):
                shutil.copytree(screenshots, Path(os.environ["SEGFLOW_TEST_ARTIFACTS"]) / "ui", dirs_exist_ok=True)

    assert flow_run["parameters"] == {"params": expected.model_dump(mode="json")}
    assert (flow_run["state_type"], flow_run["state_name"]) == ("COMPLETED", "Completed"), tail(log)
    latest = json.loads((results / "latest.json").read_text())
    record = json.loads((Path(latest["uri"]) / "run.json").read_text())
    assert record["flow_run_id"] == flow_run_id
    assert record["architectures"] == {"unet": {"status": "completed", "error": None}}
