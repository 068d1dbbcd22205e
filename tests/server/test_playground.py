"""The playground page in a real browser: Debian's chromium, headless, driven by playwright-python
(pointed at the system chromium; nothing is downloaded), on the real stack (`paris api` and
`paris worker` processes on Valkey, the shipped paris-mini model, API keys on).

It loads `/`, saves the key, offers the manifest's example prompts, speed presets and expert
names, keeps 63-bit seeds exact (JavaScript numbers would round them), asks for no favicon,
submits a text-to-video job and follows it through the events route:
the progress bar moves and the routing chart fills in column by column while it runs; the video
plays inline (readyState >= 2, duration = frames / fps), and the chart has one column per step
with the weights of /trace; then an image-to-video job with an uploaded first frame, also followed
through its events; then cancel and delete. With PARIS_SCREENSHOTS=1 it also writes the README's
screenshots, docs/playground-*.png.
"""

import os
import shutil
import time
import uuid

import httpx
import pytest
from PIL import Image, ImageDraw

from .harness import REPO, Stack, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium")
MINI = REPO / "weights" / "paris-mini"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium); "
                                                ".ci/run installs it"),
    pytest.mark.skipif(not (MINI / "model.json").is_file(), reason="weights/paris-mini is not built (make paris-mini)"),
]

KEY = "pk-playground-test"
STEPS = 12
BIG_SEED = "8772104593415965125"  # above 2**53: a JavaScript number shows 8772104593415965000
DOCS = REPO / "docs"
SCREENSHOTS = os.environ.get("PARIS_SCREENSHOTS") == "1"  # regenerate docs/playground-*.png
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, valkey):
    s = Stack(tmp_path_factory.mktemp("playground"), MINI, valkey.connection_url, f"pg{uuid.uuid4().hex[:8]}",
              api_keys=[KEY], poll_after_ms=200, tick_delay_s=0.15, max_batch=2)
    try:
        s.start_api()
        s.start_worker("w1")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    pg.goto(stack.url + "/")
    yield pg
    context.close()
    assert problems == []  # no script errors, nothing the page's CSP had to block


def api(stack, method, path, **kw):
    return httpx.request(method, stack.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, **kw)


def card(page, index=0):
    return page.locator("#job-list .job").nth(index)


def save_key(page):
    expect = sync_api.expect
    expect(page.locator("#key-status")).to_have_text("this server needs an API key")
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#key-status")).to_have_text("key saved in this browser")


def watch_progress(page, job_card) -> tuple[list[int], list[int]]:
    """aria-valuenow of the card's progress bar and the number of routing columns drawn, sampled
    until the job completes."""
    progress, columns = [], []
    end = time.time() + 90
    while time.time() < end:
        done = job_card.get_attribute("data-status") in ("completed", "failed")
        progress.append(int(job_card.locator(".progress").get_attribute("aria-valuenow")))
        columns.append(job_card.locator(".routing-chart .routing-step").count())
        if done:
            break
        time.sleep(0.05)
    return progress, columns


def wait_playable(page, job_card) -> float:
    player = job_card.locator(".player")
    player.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("el => el.readyState >= 2 && el.duration > 0", arg=player.element_handle(), timeout=30_000)
    duration = player.evaluate("el => el.duration")
    return duration


def screenshot(page, name: str):
    if not SCREENSHOTS:
        return
    page.wait_for_timeout(1500)  # chromium's media controls fade their loading spinner out
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"playground-{name}.png"), full_page=True)


def test_text_to_video_then_image_to_video_in_the_browser(page, stack, tmp_path):
    expect = sync_api.expect
    assert "Content-Security-Policy" in httpx.get(stack.url + "/").headers
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    posted: list[bytes] = []  # multipart bodies (chromium shows none for a file upload)
    page.on("request", lambda r: posted.append(r.post_data_buffer or b"") if r.method == "POST" else None)
    save_key(page)
    model = api(stack, "GET", "/v1/models").json()["data"][0]
    expect(page.locator("#model")).to_have_text(model["id"])

    # the manifest's examples, presets and expert names (paris-mini: its own vocabulary)
    examples = page.locator("#examples .example")
    assert examples.all_inner_texts() == model["examples"] and len(model["examples"]) == 8
    assert page.locator("#speed option").all_inner_texts() == ["quality", "balanced", "fast"]
    assert page.input_value("#speed") == model["default_speed"] == "quality"
    assert model["experts"] == ["translation", "scale", "fade"]

    # ---- text to video ----
    examples.nth(0).click()
    assert page.input_value("textarea[name=prompt]") == "a red circle moving left" == model["examples"][0]
    page.fill("input[name=num_inference_steps]", str(STEPS))
    page.fill("input[name=seed]", BIG_SEED)
    page.select_option("#speed", "balanced")
    page.fill("input[name=top_k]", "2")  # two experts per step: the chart shows their weights
    page.click("#submit")
    job_card = card(page)
    job_card.wait_for(timeout=10_000)
    job_id = job_card.get_attribute("data-id")
    progress, columns = watch_progress(page, job_card)
    assert job_card.get_attribute("data-status") == "completed", progress
    assert progress == sorted(progress) and progress[-1] == 100, progress
    assert any(0 < p < 100 for p in progress), progress  # the bar moved through intermediate values
    assert any(0 < c < STEPS for c in columns) and columns[-1] == STEPS, columns  # the chart filled in live
    expect(page.locator("#live-mode")).to_have_text("live: server-sent events")
    assert f"{stack.url}/v1/videos/{job_id}/events" in requested
    assert requested.count(f"{stack.url}/v1/videos/{job_id}") == 1  # no polling: the final record only

    job = api(stack, "GET", f"/v1/videos/{job_id}").json()
    assert (job["num_inference_steps"], job["seed"], job["image_to_video"]) == (STEPS, int(BIG_SEED), False)
    assert f"seed {BIG_SEED} · " in job_card.locator(".meta").inner_text() + " · "  # exact, not rounded
    assert b'name="speed"\r\n\r\nbalanced\r\n' in posted[0]
    duration = wait_playable(page, job_card)
    assert abs(duration - job["num_frames"] / job["fps"]) <= 1 / job["fps"] + 1e-6, (duration, job)
    width = int(job["size"].split("x")[0])
    assert job_card.locator(".thumb").evaluate("el => el.naturalWidth") == width
    assert job_card.locator(".download").get_attribute("href").startswith("blob:")
    assert job_card.locator(".download").get_attribute("download") == f"{job_id}.mp4"

    trace = api(stack, "GET", f"/v1/videos/{job_id}/trace").json()
    columns = job_card.locator(".routing-chart .routing-step")
    expect(columns).to_have_count(STEPS)
    assert len(trace["steps"]) == STEPS and all(len(step["experts"]) == 2 for step in trace["steps"])
    for column, step in zip(columns.all(), trace["steps"]):
        assert int(column.get_attribute("data-step")) == step["step"]
        drawn = {int(c.get_attribute("data-expert")): float(c.get_attribute("data-weight"))
                 for c in column.locator("rect").all()}
        want = {e: 0.0 for e in drawn} | {e: w for e, w in zip(step["experts"], step["weights"])}
        assert drawn == pytest.approx(want, abs=1e-4), (drawn, step)
    labels = job_card.locator(".routing-chart > text").all_text_contents()
    assert labels[:3] == model["experts"], labels
    screenshot(page, "t2v")

    # ---- image to video: first frame uploaded from a file, previewed, sent ----
    frame = tmp_path / "first.png"
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).ellipse((20, 20, 44, 44), fill=(230, 40, 40))  # paris-mini's world: a shape on black
    image.save(frame)
    page.get_by_text("Image to video", exact=True).click()
    assert page.is_checked("input[name=mode][value=i2v]") and page.is_visible("#image-input")
    page.set_input_files("#image-input", str(frame))
    page.wait_for_function("() => document.querySelector('#image-preview').naturalWidth === 64")
    page.fill("textarea[name=prompt]", "a red circle growing")
    page.fill("input[name=num_inference_steps]", "4")
    page.click("#submit")
    expect(page.locator("#job-list .job")).to_have_count(2)
    i2v_card = card(page, 0)  # newest first
    i2v_id = i2v_card.get_attribute("data-id")
    assert i2v_id != job_id
    progress, _ = watch_progress(page, i2v_card)
    assert i2v_card.get_attribute("data-status") == "completed" and any(0 < p < 100 for p in progress), progress
    expect(page.locator("#live-mode")).to_have_text("live: server-sent events")
    assert wait_playable(page, i2v_card) > 0
    i2v = api(stack, "GET", f"/v1/videos/{i2v_id}").json()
    assert i2v["image_to_video"] is True and "image to video" in i2v_card.locator(".meta").inner_text()
    expect(i2v_card.locator(".routing-chart .routing-step")).to_have_count(4)
    assert missing == [] and not any(url.endswith("/favicon.ico") for url in requested), missing
    screenshot(page, "i2v")


def test_cancel_and_delete_buttons(page, stack):
    expect = sync_api.expect
    page.emulate_media(color_scheme="dark")
    save_key(page)
    # the first test's jobs; their media load through blob: URLs, slowly on a loaded machine
    expect(page.locator("#job-list .job .player:not([hidden])")).to_have_count(2, timeout=30_000)
    for i in range(2):
        wait_playable(page, card(page, i))
    screenshot(page, "dark")
    page.fill("textarea[name=prompt]", "a blue circle moving right")
    page.fill("input[name=num_inference_steps]", "40")
    page.click("#submit")
    expect(page.locator("#job-list .job")).to_have_count(3)
    job_card = card(page)  # newest first
    job_id = job_card.get_attribute("data-id")
    wait_until(lambda: api(stack, "GET", f"/v1/videos/{job_id}").json()["status"] == "in_progress", 60, 0.1,
               "job running")
    seed = api(stack, "GET", f"/v1/videos/{job_id}").json()["seed"]  # the server's choice: 63 bits
    expect(job_card.locator(".meta")).to_contain_text(f"seed {seed}")
    job_card.locator(".cancel").click()
    expect(job_card).to_have_attribute("data-status", "failed")
    expect(job_card.locator(".job-error")).to_contain_text("cancelled")
    assert api(stack, "GET", f"/v1/videos/{job_id}").json()["error"]["code"] == "cancelled"
    job_card.locator(".delete").click()
    expect(page.locator(f'#job-list .job[data-id="{job_id}"]')).to_have_count(0)
    assert api(stack, "GET", f"/v1/videos/{job_id}").status_code == 404
