"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright)
against a real `curate serve` on 127.0.0.1 with a finished job: login, the jobs list,
the job overview's funnel against the API's /stats, a dropped document's reason, and
the session's security (redirects, cookie flags, CSRF, no open redirect)."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import GOOD, write_shard

from service.auth import KeyStore
from service.local_server import LocalServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or __import__("importlib").util.find_spec("playwright") is None,
    reason="no Chromium (apt-get install -y chromium) or no playwright (pip install playwright)")


@pytest.fixture(scope="module")
def served(ray_head, tmp_path_factory):
    """A real server with a finished job, and a read key."""
    tmp = tmp_path_factory.mktemp("dash")
    short = "The river runs through the old town and past the mill at the end of the road."
    write_shard(tmp / "data" / "a.parquet", [GOOD, GOOD.upper(), short, GOOD.replace("city", "town")],
                ids=["a0", "a1", "a2", "a3"])
    write_shard(tmp / "data" / "b.parquet", [GOOD.replace("city", "port"), "#x " * 60], ids=["b0", "b1"])
    server = LocalServer(tmp / "home", tmp / "data", env={"CURATE_POLL_SECONDS": "0.3",
                                                          "RAY_ADDRESS": ray_head.address,
                                                          "CURATE_RAY_JOBS_URL": ray_head.jobs_url},
                         log=tmp / "serve.log").start()
    job_id = run_job(server, "dash", {})
    read_key, _ = KeyStore(tmp / "home" / "api_keys.json").create("read", note="dashboard test")
    yield server, job_id, read_key, tmp
    server.stop()


def run_job(server, name: str, rules: dict) -> str:
    spec = {"name": name, "inputs": ["*.parquet"], "output": name,
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "minhash_dedup_v1"},
                       {"stage": "quality_rules_v1", "params": rules}]}
    job_id = httpx.post(f"{server.base}/jobs", json=spec, headers=server.auth, timeout=30).json()["job_id"]
    deadline = time.time() + 180
    while httpx.get(f"{server.base}/jobs/{job_id}", headers=server.auth).json()["state"] != "succeeded":
        assert time.time() < deadline, server.log()
        time.sleep(0.5)
    return job_id


def login(page, base: str, key: str, then: str) -> None:
    page.goto(f"{base}{then}")
    assert "/ui/login" in page.url  # no session: the login form
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(then) + "$"))


def test_pages_need_a_session_and_the_cookie_is_safe(served):
    server, job_id, read_key, _ = served
    with httpx.Client(base_url=server.base) as web:
        r = web.get(f"/ui/jobs/{job_id}")
        assert r.status_code == 303 and r.headers["location"] == f"/ui/login?next=/ui/jobs/{job_id}"
        bad = web.post("/ui/login", data={"key": "curate_wrong", "next": "/ui/jobs"})
        assert bad.status_code == 401 and "That API key is not valid" in bad.text
        evil = web.post("/ui/login", data={"key": read_key, "next": "https://evil.example/"})
        assert evil.status_code == 303 and evil.headers["location"] == "/ui/jobs"  # no open redirect
        cookie = evil.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and read_key not in cookie
        # the session authenticates the API's GET routes too, for the pages' scripts ...
        assert web.get(f"/jobs/{job_id}/stats").status_code == 200
        # ... but a state-changing request with the cookie needs the CSRF header, and a read key stays read-only
        assert web.post(f"/jobs/{job_id}/preview-selection", json={"stage": "quality_rules_v1"}).status_code == 403
        assert "X-Curate-CSRF" in web.post(f"/jobs/{job_id}/cancel").text
        token = re.search(r'name="csrf" value="([^"]+)"', web.get("/ui/jobs").text).group(1)
        with_token = web.post(f"/jobs/{job_id}/cancel", headers={"X-Curate-CSRF": token})
        assert with_token.status_code == 403 and "read-only" in with_token.text  # the key's role still holds
        # a post from another site is refused, whatever it carries
        assert web.post("/ui/logout", headers={"Origin": "https://evil.example"}).status_code == 403
        assert web.get("/ui/jobs/nope").status_code == 404 and "Not available" in web.get("/ui/jobs/nope").text
        web.post("/ui/logout")
        assert web.get("/ui/jobs").status_code == 303


@needs_browser
def test_the_dashboard_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, job_id, read_key, _ = served
    stats = httpx.get(f"{server.base}/jobs/{job_id}/stats", headers=server.auth).json()
    shots = Path(os.environ.get("CURATE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, server.base, read_key, f"/ui/jobs/{job_id}")
        # the funnel shows the API's numbers, stage by stage
        for st in stats["stages"]:
            row = page.locator(f"#funnel tr[data-stage='{st['stage']}']")
            for field in ("docs_in", "kept", "dropped", "created", "docs_out"):
                assert row.locator(f"[data-field={field}]").inner_text() == f"{st[field]:,}", (st["stage"], field)
        assert page.locator("code", has_text="quality_rules.too_few_words").count() >= 1
        page.screenshot(path=str(shots / "job-overview.png"), full_page=True)
        # a dropped document, from the reason's examples, says why
        page.locator("table.reasons a", has_text="a2").first.click()
        page.wait_for_url(re.compile(r"/documents/a2$"))
        assert page.locator("#reason").inner_text() == "quality_rules.too_few_words"
        assert "Dropped" in page.locator("#outcome").inner_text()
        page.screenshot(path=str(shots / "document.png"), full_page=True)
        # a near-duplicate shows its MinHash cluster: members, decisions and Jaccards
        dup = httpx.get(f"{server.base}/jobs/{job_id}/documents", headers=server.auth,
                        params={"stage": "minhash_dedup_v1", "decision": "drop"}).json()["items"]
        assert dup and dup[0]["reason"] == "minhash.duplicate"
        page.goto(f"{server.base}/ui/jobs/{job_id}/documents/{dup[0]['doc_id']}")
        members = page.locator("table.cluster tbody tr")
        assert members.count() >= 2 and dup[0]["survivor_id"] in members.all_inner_texts()[0]
        jaccard = dup[0]["scores"]["survivor_jaccard"]
        assert f"{jaccard:,.4g}" in page.locator("table.cluster").inner_text()
        assert page.locator("#text").inner_text().startswith("The history of the")
        page.screenshot(path=str(shots / "duplicate.png"), full_page=True)
        # the jobs list
        page.get_by_role("link", name="Jobs").first.click()
        page.wait_for_url(re.compile(r"/ui/jobs$"))
        assert page.locator(f"tr[data-job='{job_id}'] [data-field=state]").inner_text() == "succeeded"
        duration = page.locator(f"tr[data-job='{job_id}'] [data-field=duration]").inner_text()
        assert re.fullmatch(r"\d+s|\d+m \d\ds", duration), duration
        assert page.locator(f"tr[data-job='{job_id}'] [data-field=docs_out]").inner_text() == \
            f"{stats['stages'][-1]['docs_out']:,}"
        page.screenshot(path=str(shots / "jobs.png"), full_page=True)
        # logging out ends the session
        page.get_by_role("button", name="Log out").click()
        page.goto(f"{server.base}/ui/jobs")
        assert "/ui/login" in page.url
        browser.close()
    assert all((shots / f).stat().st_size > 10_000 for f in ("job-overview.png", "document.png", "jobs.png"))


@needs_browser
def test_distributions_what_if_and_samples_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, job_id, read_key, _ = served
    expected = httpx.post(f"{server.base}/jobs/{job_id}/preview-selection", headers=server.auth,
                          json={"stage": "quality_rules_v1", "params": {"min_words": 10}}).json()
    shots = Path(os.environ.get("CURATE_SCREENSHOTS", tmp_path))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, server.base, read_key, f"/ui/jobs/{job_id}")
        page.get_by_role("link", name="quality_rules_v1").click()
        page.wait_for_url(re.compile(r"/stages/3$"))
        # a histogram per stored score, with the current cut drawn where select cuts
        chart = page.locator("figure[data-score=word_count]")
        assert chart.locator("rect").count() == 40 and chart.locator("line.cut").count() == 1
        assert chart.locator("text", has_text="50").count() >= 1
        assert page.locator("figure.chart").count() == 8
        # what-if: min_words 50 -> 10, the funnel preview-selection gives
        page.get_by_label("min_words").fill("10")
        page.get_by_role("button", name="Preview").click()
        page.locator("#after-kept").wait_for()
        assert page.locator("#before-kept").inner_text() == f"{expected['before']['kept']:,}"
        assert page.locator("#after-kept").inner_text() == f"{expected['after']['kept']:,}"
        assert page.locator("#after-tokens").inner_text() == f"{expected['after']['kept_tokens']:,}"
        assert expected["after"]["kept"] > expected["before"]["kept"]
        # samples: kept and dropped side by side, the dropped ones for the chosen reason
        assert page.locator("#dropped-h code").inner_text() == "quality_rules.too_few_words"
        assert page.locator("section[aria-labelledby=dropped-h] .sample a").all_inner_texts() == ["a2"]
        page.screenshot(path=str(shots / "stage.png"), full_page=True)
        browser.close()


@needs_browser
def test_launch_form_and_compare_two_jobs_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, job_id, _, _ = served
    other = run_job(server, "dash-lenient", {"min_words": 10})
    admin = server.auth["Authorization"].split()[1]
    shots = Path(os.environ.get("CURATE_SCREENSHOTS", tmp_path))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, server.base, admin, "/ui/jobs")
        # a bad spec: the field path is named and nothing is launched
        before = len(httpx.get(f"{server.base}/jobs", headers=server.auth).json()["items"])
        page.get_by_label("Job spec").fill("name: bad\ninputs: ['*.parquet']\noutput: bad\n"
                                           "stages:\n  - stage: quality_rules_v1\n    params: {min_words: lots}\n")
        page.get_by_role("button", name="Launch").click()
        message = page.locator("#spec-errors").inner_text()
        assert "stages.0" in message and "params.min_words: Input should be a valid integer" in message
        assert len(httpx.get(f"{server.base}/jobs", headers=server.auth).json()["items"]) == before
        page.get_by_label("Job spec").fill("name: launched\ninputs: ['*.parquet']\noutput: launched\n"
                                           "stages:\n  - stage: exact_dedup_v1\n")
        page.get_by_role("button", name="Launch").click()
        page.wait_for_url(re.compile(r"/ui/jobs/launched-[0-9a-f]+$"))
        # compare: the strict job against the lenient one
        page.goto(f"{server.base}/ui/compare?a={other}&b={job_id}")
        outcome = {}
        for jid in (other, job_id):
            rows = httpx.get(f"{server.base}/jobs/{jid}/documents", params={"limit": 500},
                             headers=server.auth).json()["items"]
            outcome[jid] = {r["doc_id"]: any(x["decision"] == "drop" for x in rows if x["doc_id"] == r["doc_id"])
                            for r in rows}
        lenient_only = sum(not outcome[other][d] and outcome[job_id][d] for d in outcome[other])
        assert lenient_only >= 1
        assert page.locator("[data-field=a_kept_b_dropped]").inner_text() == f"{lenient_only:,}"
        assert page.locator("[data-field=b_kept_a_dropped]").inner_text() == "0"
        assert page.locator("table", has_text="quality_rules.too_few_words").locator("a", has_text="a2").count() == 1
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        browser.close()


@needs_browser
def test_the_jobs_page_follows_a_running_job_without_reloading(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, _, read_key, tmp = served
    rng = random.Random(5)
    words = GOOD.lower().replace(",", "").replace(".", "").split()
    for s in range(6):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(50, 400))) for _ in range(3000)]
        write_shard(tmp / "data" / "slow" / f"s{s}.parquet", texts, ids=[f"s{s}-{i}" for i in range(3000)])
    spec = {"name": "slow", "inputs": ["slow/*.parquet"], "output": "slow",
            "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1"}], "execution": {"num_workers": 1}}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, server.base, read_key, "/ui/jobs")
        job_id = httpx.post(f"{server.base}/jobs", json=spec, headers=server.auth, timeout=30).json()["job_id"]
        page.reload()
        page.evaluate("window.__notReloaded = true")
        state = page.locator(f"tr[data-job='{job_id}'] [data-field=state]")
        assert state.inner_text() in ("queued", "running")
        state.filter(has_text="succeeded").wait_for(timeout=180_000)  # the page's own polling got there
        assert page.evaluate("window.__notReloaded === true")
        job = httpx.get(f"{server.base}/jobs/{job_id}", headers=server.auth).json()
        bars = page.locator(f"tr[data-job='{job_id}'] [role=progressbar]")
        assert bars.count() == len(job["progress"]["stages"])
        last = job["progress"]["stages"][-1]
        assert bars.last.get_attribute("aria-valuenow") == str(last["units_total"])
        assert page.locator(f"tr[data-job='{job_id}'] [data-field=docs_out]").inner_text() == f"{last['docs_out']:,}"
        browser.close()
