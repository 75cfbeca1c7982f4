"""The radiologist's day in a real browser (Debian's Chromium, headless, driven by Playwright) against the live server:
log in, open the queue, take the next image, paint, erase, undo, save, approve; then read the stored mask's pixels."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from annotator.models import Image, Job, Mask, TrainingRun
from annotator.masks.services import mask_array
from tests.conftest import DEMO_BUSI, PASSWORD, ROOT
from tests.factories import annotated_image, box_mask, mask_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "var" / "test-artifacts"))
SCAN = DEMO_BUSI / "images" / "benign_002.png"  # a real ultrasound scan, 320x272
SIZE = (320, 272)
LESION_BOX = (70, 135, 140, 170)  # on the scan's lesion
MODEL_BOX = (20, 20, 60, 60)


@pytest.fixture
def browser(monkeypatch):
    if not shutil.which(CHROMIUM) and not os.environ.get("REQUIRE_BROWSER"):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from django.db import connections
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # The test's ORM calls ran in Playwright's greenlet, on a database connection of their own.
        connections.close_all()


def logged_in_page(browser, live_server, username):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text(\"Log in\")")
    page.wait_for_url(f"{live_server.url}/")
    return page


def wait_until(page, expression, timeout=30):
    """Poll the page until `expression` is true. Not page.wait_for_function: Playwright runs its predicate through
    eval, which the site's Content-Security-Policy refuses; page.evaluate comes from DevTools, which it lets through."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still not true after {timeout} s: {expression}"
        page.wait_for_timeout(50)


def editor_ready(page, model_pixels):
    wait_until(page, f"window.maskEditor && window.maskEditor.foregroundPixels() === {model_pixels}")


def screen_point(page, x, y):
    """Where image pixel (x, y) is on the screen, whatever the zoom."""
    left, top, width, height = page.eval_on_selector(
        "[data-stage]", "e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }")
    return left + (x + 0.5) * width / SIZE[0], top + (y + 0.5) * height / SIZE[1]


def drag(page, start, end):
    page.mouse.move(*screen_point(page, *start))
    page.mouse.down()
    page.mouse.move(*screen_point(page, *end), steps=15)
    page.mouse.up()


def bit(page, x, y):
    return page.evaluate(f"window.maskEditor.bits[{y} * window.maskEditor.width + {x}]")


def segment_distance(shape, start, end):
    """Each pixel centre's distance to the segment start-end."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    (x1, y1), (x2, y2) = start, end
    t = np.clip(((xs - x1) * (x2 - x1) + (ys - y1) * (y2 - y1)) / ((x2 - x1) ** 2 + (y2 - y1) ** 2), 0, 1)
    return np.hypot(xs - (x1 + t * (x2 - x1)), ys - (y1 + t * (y2 - y1)))


def test_paint_erase_undo_save_and_approve_in_the_browser(team, live_server, browser, transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, uncertainty=0.9, flagged=True, box=LESION_BOX)
    annotated_image(team.project, "calm.png", size=SIZE, uncertainty=0.1)
    page = logged_in_page(browser, live_server, "radiologist")
    model = box_mask(SIZE, LESION_BOX)

    page.click("text=Review queue")
    assert page.locator("table.grid").inner_text().count(".png") == 2
    page.click("text=Take the next image")
    page.wait_for_url(f"{live_server.url}/review/images/{image.pk}/")
    editor_ready(page, model.sum())
    brush = page.evaluate("window.maskEditor.size")

    # A brush stroke, then the eraser through its middle; undo brings the middle back.
    stroke = ((150, 150), (300, 150))
    drag(page, *stroke)
    assert bit(page, 225, 150) == 1
    page.keyboard.press("e")
    drag(page, (200, 150), (250, 150))
    assert bit(page, 225, 150) == 0 and bit(page, 160, 150) == 1
    page.keyboard.press("Control+z")
    assert bit(page, 225, 150) == 1
    assert "Unsaved" in page.inner_text("[data-save-status]")

    page.keyboard.press("Control+s")
    wait_until(page, "document.querySelector('[data-save-status]').textContent.includes('Saved as version 2')")
    assert page.inner_text("[data-version-count]") == "2"
    page.check("[data-toggle=model-mask]")
    page.check("[data-toggle=cam-resnet50]")
    page.click("[data-window-auto]")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-editor.png"))

    page.keyboard.press("a")
    page.wait_for_url(lambda url: f"/review/images/{image.pk}/" not in url)
    page.close()

    image.refresh_from_db()
    saved = image.masks.get(version=2)
    assert image.review_status == "approved" and image.reviewed_by == team.radiologist
    assert image.approved_mask == saved and saved.source == Mask.Source.HUMAN and saved.author == team.radiologist
    assert np.array_equal(mask_array(saved.parent), model) and saved.parent.version == 1  # v1 untouched

    pixels = mask_array(saved)
    distance = segment_distance(pixels.shape, *stroke)
    assert pixels[model].all(), "the model's mask was kept"
    assert pixels[distance <= brush / 2 - 1.5].all(), "the stroke, erased and restored by undo, is in the mask"
    assert not pixels[(distance > brush / 2 + 1.5) & ~model].any(), "nothing else was painted"


def test_polygon_and_flood_fill_clear_zoom_sizes_and_sixty_undos(team, live_server, browser, transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, flagged=True, box=MODEL_BOX)
    page = logged_in_page(browser, live_server, "admin")
    page.goto(f"{live_server.url}/review/images/{image.pk}/")
    editor_ready(page, 40 * 40)
    pixels = lambda: page.evaluate("window.maskEditor.foregroundPixels()")  # noqa: E731

    page.keyboard.press("p")
    for corner in ((100, 100), (200, 100), (200, 200), (100, 200)):
        page.mouse.click(*screen_point(page, *corner))
    page.keyboard.press("Enter")
    assert bit(page, 150, 150) == 1 and bit(page, 250, 150) == 0
    assert abs(pixels() - 1600 - 100 * 100) < 400
    for corner in ((250, 30), (300, 30)):  # a triangle closed by a double click
        page.mouse.click(*screen_point(page, *corner))
    page.mouse.dblclick(*screen_point(page, 275, 80))
    assert bit(page, 275, 45) == 1 and bit(page, 255, 75) == 0
    page.keyboard.press("Control+z")
    assert bit(page, 275, 45) == 0

    page.keyboard.press("f")
    page.mouse.click(*screen_point(page, 150, 150))  # on a painted region: removes that blob
    assert pixels() == 1600
    page.mouse.click(*screen_point(page, 300, 250))  # on the background: fills it, the model's box stays a hole
    assert pixels() == SIZE[0] * SIZE[1] and bit(page, 40, 40) == 1
    page.keyboard.press("Control+z")
    assert pixels() == 1600

    page.click("[data-action=clear]")
    assert pixels() == 0
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+Shift+z")
    page.keyboard.press("Control+z")
    assert pixels() == 1600

    # Zoomed in, the brush still lands where the pointer is.
    page.keyboard.press("b")
    for _ in range(3):
        page.keyboard.press("+")
    assert page.evaluate("window.maskEditor.zoom.scale") > 1.5
    start_size = page.evaluate("window.maskEditor.size")
    page.keyboard.press("]")
    page.keyboard.press("]")
    assert page.evaluate("window.maskEditor.size") > start_size
    page.keyboard.press("[")
    page.keyboard.press("[")
    size = page.evaluate("window.maskEditor.size")
    before = pixels()
    for i in range(60):
        x, y = 170 + (i % 10) * 6, 130 + (i // 10) * 6
        page.mouse.move(*screen_point(page, x, y))
        page.mouse.down()
        page.mouse.up()
        assert bit(page, x, y) == 1
    assert pixels() > before and size < 12
    for _ in range(60):
        page.keyboard.press("Control+z")
    assert pixels() == before, "sixty steps undone"
    assert page.evaluate("window.maskEditor.undoStack.length") == 2  # the polygon and the blob removed
    page.close()


def test_a_drawing_undone_past_the_history_still_counts_as_unsaved(team, live_server, browser, transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, box=MODEL_BOX)
    page = logged_in_page(browser, live_server, "radiologist")
    page.goto(f"{live_server.url}/review/images/{image.pk}/")
    editor_ready(page, 40 * 40)
    assert not page.evaluate("window.maskEditor.dirty")
    # 101 strokes: the oldest falls out of the 100-step history, so undoing all the rest cannot reach version 1.
    page.evaluate("""() => {
        const editor = window.maskEditor;
        for (let i = 0; i < 101; i++) { editor.strokeStart({x: 100 + 2 * i, y: 250}); editor.strokeEnd(); }
        for (let i = 0; i < 100; i++) editor.undo();
    }""")
    assert page.evaluate("window.maskEditor.undoStack.length") == 0 and bit(page, 100, 250) == 1
    assert page.evaluate("window.maskEditor.dirty"), "the first stroke is still there and unsaved"
    page.close()


def test_a_few_clicks_redraw_the_mask_undo_drops_a_click_and_the_result_saves_as_a_version(team, live_server, browser,
                                                                                           transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, flagged=True, box=MODEL_BOX)
    page = logged_in_page(browser, live_server, "radiologist")
    page.goto(f"{live_server.url}/review/images/{image.pk}/")
    editor_ready(page, 40 * 40)
    pixels = lambda: page.evaluate("window.maskEditor.foregroundPixels()")  # noqa: E731
    session = lambda: page.evaluate("window.maskEditor.clickSession().length")  # noqa: E731
    refined = "!window.maskEditor.refining && window.maskEditor.pendingClicks.length === 0"
    lesion = ((LESION_BOX[0] + LESION_BOX[2]) // 2, (LESION_BOX[1] + LESION_BOX[3]) // 2)

    page.keyboard.press("s")
    assert page.evaluate("window.maskEditor.tool") == "clicks"
    page.mouse.click(*screen_point(page, *lesion))
    wait_until(page, f"{refined} && window.maskEditor.clickSession().length === 1")
    assert pixels() != 40 * 40 and bit(page, *lesion) == 1
    assert page.locator("[data-clicks] circle.positive").count() == 1
    assert "Unsaved" in page.inner_text("[data-save-status]")

    page.keyboard.press("Control+z")  # the refinement and its click are gone
    assert pixels() == 40 * 40 and session() == 0
    assert page.locator("[data-clicks] circle").count() == 0

    page.mouse.click(*screen_point(page, *lesion))
    wait_until(page, f"{refined} && window.maskEditor.clickSession().length === 1")
    page.mouse.click(*screen_point(page, 40, 40), button="right")  # "not lesion" on the model's box
    wait_until(page, f"{refined} && window.maskEditor.clickSession().length === 2")
    assert bit(page, 40, 40) == 0 and bit(page, *lesion) == 1
    assert page.locator("[data-clicks] circle.negative").count() == 1
    # Clicks made while a request is in flight wait for it and go in the next one, with the session's.
    page.evaluate(f"""() => {{
        const editor = window.maskEditor;
        for (const x of [{lesion[0] - 10}, {lesion[0] + 10}]) {{
            editor.clickStart({{x, y: {lesion[1]}}}, true);
            editor.clickEnd();
        }}
    }}""")
    wait_until(page, f"{refined} && window.maskEditor.clickSession().length === 4")
    assert page.evaluate("window.maskEditor.undoStack.map((entry) => entry.clicks.length)") == [1, 2, 3, 4]
    shown = page.evaluate("Array.from(window.maskEditor.bits)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-clicks.png"))

    page.keyboard.press("Control+s")
    wait_until(page, "document.querySelector('[data-save-status]').textContent.includes('Saved as version 2')")
    assert session() == 0 and page.locator("[data-clicks] circle").count() == 0  # a save ends the session
    page.close()
    saved = Image.objects.get(pk=image.pk).masks.get(version=2)
    assert saved.source == Mask.Source.HUMAN and saved.author == team.radiologist
    assert np.array_equal(mask_array(saved).ravel(), np.array(shown, dtype=bool))


def test_job_and_fine_tuning_progress_follow_the_api_and_the_page_reloads_when_they_end(team, live_server, browser,
                                                                                        transactional_db):
    job = Job.objects.create(project=team.project, source_name="scans.zip", status=Job.Status.RUNNING, imported=4)
    run = TrainingRun.objects.create(project=team.project, status=TrainingRun.Status.RUNNING, message="epoch 1")
    jobs = Job.objects.filter(pk=job.pk)
    runs = TrainingRun.objects.filter(pk=run.pk)
    page = logged_in_page(browser, live_server, "admin")
    for url, row, advance, finish, ended in [
        (f"/projects/{team.project.pk}/", f"/api/jobs/{job.pk}/", lambda: jobs.update(annotated=2),
         lambda: jobs.update(annotated=4, status=Job.Status.DONE), ("done", "4 / 4")),
        (f"/projects/{team.project.pk}/models/", f"/api/training-runs/{run.pk}/",
         lambda: runs.update(progress=0.5, message="epoch 3"),
         lambda: runs.update(progress=1.0, status=TrainingRun.Status.FAILED, message="out of memory"),
         ("failed", "out of memory")),
    ]:
        page.goto(f"{live_server.url}{url}")
        selector = f'tr[data-poll-url="{row}"]'
        advance()
        wait_until(page, f"document.querySelector('{selector} progress').value === 0.5")
        assert page.inner_text(f"{selector} [data-field=status]") == "running"
        with page.expect_navigation():  # the page reloads itself once the work has ended
            finish()
        status, shown = ended
        assert page.inner_text(f"{selector} [data-field=status]") == status
        assert shown in page.inner_text(selector)
    page.close()


def test_a_stale_save_keeps_the_drawing_and_can_go_on_top(team, live_server, browser, transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, flagged=True, box=MODEL_BOX)
    page = logged_in_page(browser, live_server, "radiologist")
    page.goto(f"{live_server.url}/review/images/{image.pk}/")
    editor_ready(page, 40 * 40)
    drag(page, (150, 150), (300, 150))

    # Meanwhile an admin saves version 2 through the API.
    theirs = box_mask(SIZE, (250, 200, 300, 250))
    team.api(team.admin).post(f"/api/images/{image.pk}/masks/", {"parent_version": 1, "file": mask_file(theirs)},
                              format="multipart")

    page.keyboard.press("Control+s")
    wait_until(page, "document.querySelector('[data-save-status]').dataset.kind === 'error'")
    assert "version 2 is now the latest" in page.inner_text("[data-save-status]")
    assert bit(page, 225, 150) == 1, "the drawing is still on screen"
    assert list(Image.objects.get(pk=image.pk).masks.values_list("version", flat=True)) == [1, 2]

    page.click("[data-save-on-top]")
    wait_until(page, "document.querySelector('[data-save-status]').textContent.includes('Saved as version 3')")

    # The history shows the three versions side by side.
    page.click("text=Versions")
    page.wait_for_url(f"{live_server.url}/review/images/{image.pk}/history/")
    assert page.locator("article.card").count() == 3
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "mask-history.png"), full_page=True)
    page.close()
    versions = {m.version: m for m in Image.objects.get(pk=image.pk).masks.all()}
    assert np.array_equal(mask_array(versions[2]), theirs), "their version is kept as it was"
    assert versions[3].parent == versions[2] and mask_array(versions[3])[150, 225]


def test_every_page_and_the_api_docs_run_under_the_content_security_policy(team, live_server, browser,
                                                                           transactional_db):
    image = annotated_image(team.project, "scan.png", picture=SCAN, flagged=True, box=MODEL_BOX)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.add_init_script("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text(\"Log in\")")
    page.wait_for_url(f"{live_server.url}/")
    for url, ready in [
        ("/", "main"), (f"/projects/{team.project.pk}/", "main"), (f"/projects/{team.project.pk}/models/", "main"),
        (f"/projects/{team.project.pk}/dashboard/", "main"), ("/review/", "table.grid"),
        (f"/review/images/{image.pk}/", "[data-stage]"), (f"/review/images/{image.pk}/history/", "article.card"),
        ("/admin/", "#content"), ("/api/docs/", ".opblock"),  # Swagger UI drew the operations: its scripts ran
    ]:
        page.goto(f"{live_server.url}{url}")
        page.wait_for_selector(ready)
        if url == f"/review/images/{image.pk}/":
            editor_ready(page, 40 * 40)  # the editor's modules ran and drew the model's mask
        assert page.evaluate("window.cspViolations") == [], url
    page.close()
