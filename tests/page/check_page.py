#!/usr/bin/env python3
"""Loads the operator page of a live cluster in headless Chromium (Selenium) and
prints, as JSON on stdout, what the page shows; tests/page.rs checks it against the
cluster's API. Exits non-zero, with the page's text and the browser's console on
stderr, when the page does not come to show what is waited for.

Steps: the page asks for the API key (the cluster has one); a wrong key is refused
and asked for again; the right key shows three members, the session with completed
tasks, and a live throughput figure above zero. A screenshot goes to --screenshot.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

STATES = ["queued", "acked", "precommitted", "committed", "completed", "failed", "cancelled"]

# One consistent reading of everything the test checks, taken inside the page.
READ_PAGE = """
const text = (id) => document.getElementById(id).textContent.trim();
const rows = (id) => Array.from(document.getElementById(id).tBodies[0].rows);
const members = rows("members").map((tr) => {
  const c = Array.from(tr.cells).map((td) => td.textContent.trim());
  return {id: c[0], api: c[1], role: c[2], term: c[3], applied_index: c[4], lag: c[5], reachable: c[6]};
});
const session = rows("sessions").find((tr) => tr.dataset.id === arguments[0]);
let row = null;
if (session) {
  const c = Array.from(session.cells).map((td) => td.textContent.trim());
  const counts = {};
  for (const td of session.cells) if (td.dataset.state) counts[td.dataset.state] = td.textContent.trim();
  row = {id: c[0], state: c[1], k_q: c[2], reserved: c[3], counts, submitted: c[c.length - 1]};
}
return {
  key_form_hidden: document.getElementById("key-form").hidden,
  served_by: text("served-by"),
  leader: text("leader"),
  term: text("term"),
  members,
  session: row,
  sessions: rows("sessions").length,
  miners: rows("miners").length,
  scaling: text("scaling"),
  pooled: text("pool-pooled"),
  reserved: text("pool-reserved"),
  throughput: text("throughput"),
  throughput_label: text("throughput-label"),
  throughput_source: document.getElementById("throughput").dataset.source || null,
  status: text("status"),
};
"""


def browser(chromium, chromedriver):
    options = webdriver.ChromeOptions()
    if chromium:
        options.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--chromium", default=os.environ.get("SQ_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--chromedriver",
                    default=os.environ.get("SQ_CHROMEDRIVER", "/usr/bin/chromedriver"))
    args = ap.parse_args()

    driver = browser(args.chromium, args.chromedriver)
    step = "loading the page"
    try:
        wait = WebDriverWait(driver, args.timeout, poll_frequency=0.2)
        read = lambda: driver.execute_script(READ_PAGE, args.session)
        driver.get(args.url)

        step = "the page asks for the API key"
        form = wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed()
                          and d.find_element(By.ID, "key-form"))

        step = "a wrong key is refused and asked for again"
        enter_key(driver, "not-the-key")
        wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed()
                   and "refused" in d.find_element(By.ID, "key-error").text)
        wrong_key_refused = True

        step = "the right key shows three members and one leader"
        enter_key(driver, args.key)
        wait.until(lambda d: not d.find_element(By.ID, "key-form").is_displayed())
        wait.until(lambda d: (lambda p: len(p["members"]) == 3
                              and sum(m["role"] == "leader" for m in p["members"]) == 1
                              and all(m["applied_index"] not in ("", "–") for m in p["members"]))(read()))

        step = "the session shows with completed tasks"
        wait.until(lambda d: (lambda p: p["session"] is not None
                              and positive(p["session"]["counts"].get("completed", "0")))(read()))

        step = "a live throughput figure above zero"
        wait.until(lambda d: positive(read()["throughput"]))

        # A few more seconds of the sparkline, for the picture only.
        time.sleep(6)
        step = "the final reading"
        seen = read()
        if not positive(seen["throughput"]):
            # Between two bursts of work the figure may dip: read it when it is up.
            wait.until(lambda d: positive(read()["throughput"]))
            seen = read()
        seen["wrong_key_refused"] = wrong_key_refused

        step = "the screenshot"
        # The whole page in one picture: the window is the page's height plus its frame.
        height = driver.execute_script(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
        driver.set_window_size(1400, max(1000, min(int(height) + 8, 4000)))
        time.sleep(1.2)  # let the sparkline redraw at the new size
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        if not driver.save_screenshot(args.screenshot):
            raise RuntimeError("the browser saved no screenshot")
        json.dump(seen, sys.stdout, indent=1)
        print()
    except (TimeoutException, WebDriverException, RuntimeError, ValueError) as e:
        fail(driver, step, e)
        sys.exit(1)
    finally:
        driver.quit()


def enter_key(driver, key):
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def positive(text):
    try:
        return float(text) > 0
    except ValueError:
        return False


def fail(driver, step, error):
    print(f"the page check failed at: {step}: {type(error).__name__}: {error}", file=sys.stderr)
    try:
        print("--- page text ---\n" + driver.find_element(By.TAG_NAME, "body").text,
              file=sys.stderr)
        print("--- browser console ---", file=sys.stderr)
        for entry in driver.get_log("browser"):
            print(f"{entry.get('level')} {entry.get('message')}", file=sys.stderr)
        shot = os.path.join(tempfile.gettempdir(), "operator-page-failed.png")
        driver.save_screenshot(shot)
        print(f"screenshot of the failure: {shot}", file=sys.stderr)
    except WebDriverException as e:
        print(f"(could not read the page: {e})", file=sys.stderr)


if __name__ == "__main__":
    main()
