//! The web UI in headless Chromium (Debian's `chromium` and `chromedriver`, installed by
//! scripts/install-tools.sh), through real processes: nats-server, a coordinator, a worker
//! and `sluice server` with tokens. A page without a session redirects to the login; an
//! unknown token is refused there; the home, runs, run and job pages show the real runs
//! (job names, states, counts); a live run's DAG changes colour without a reload; cancel
//! and retry change what the page shows, a refused retry shows its refusal; a viewer gets
//! no buttons and is refused (403) when acting anyway; a form without the session's CSRF
//! token and a cross-origin post are refused; no page logs a console error and no request
//! leaves the origin (both read from Chromium's own logs). Screenshots of each page go to
//! target/ui-screenshots/ (`make screenshots` copies them into docs/ui/).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sluice_testkit::http::request;

const ALICE: &str = "alice-operator-token";
const BOB: &str = "bob-viewer-token";
/// How long a page may take to show what it should.
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// `GET /session/{id}/se/log`: chromedriver's log of the browser (console) or of
/// DevTools (`performance`: every network request), emptied by each read.
#[derive(Debug)]
struct ReadLog(&'static str);

impl fantoccini::wd::WebDriverCompatibleCommand for ReadLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": self.0}).to_string()))
    }
}

struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Client,
    origin: String,
    screenshots: PathBuf,
}

impl Browser {
    fn start(stack: &mut Stack, origin: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = which("chromedriver");
        stack.spawn_program("chromedriver", &driver, &[&format!("--port={port}")], &[]);
        let driver_address = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), "chromedriver to listen", || {
            std::net::TcpStream::connect(&driver_address).is_ok()
        });
        // A fresh profile in the test's own directory, removed with it.
        let profile = stack.write("chromium-profile.marker", "").with_extension("d");
        std::fs::create_dir_all(&profile).unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(
                ClientBuilder::new(connector).capabilities(capabilities).connect(&format!("http://{driver_address}")),
            )
            .unwrap_or_else(|error| panic!("starting Chromium through chromedriver: {error}"));
        let screenshots = workspace_root().join("target/ui-screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        Self { runtime, client, origin: origin.to_owned(), screenshots }
    }

    fn goto(&self, path: &str) {
        self.runtime.block_on(self.client.goto(&format!("{}{path}", self.origin))).unwrap();
    }

    fn path(&self) -> String {
        let url = self.runtime.block_on(self.client.current_url()).unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The text of the first element `css` finds, waiting (bounded) for it to exist.
    fn text(&self, css: &str) -> String {
        self.runtime.block_on(async {
            match self.client.wait().at_most(PAGE_WAIT).for_element(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap(),
                Err(error) => {
                    let page = self.client.source().await.unwrap_or_default();
                    panic!("{css}: {error}; the page is:\n{page}")
                }
            }
        })
    }

    fn texts(&self, css: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let mut texts = Vec::new();
            for element in self.client.find_all(Locator::Css(css)).await.unwrap() {
                texts.push(element.text().await.unwrap());
            }
            texts
        })
    }

    fn exists(&self, css: &str) -> bool {
        !self.runtime.block_on(self.client.find_all(Locator::Css(css))).unwrap().is_empty()
    }

    fn fill(&self, css: &str, text: &str) {
        self.runtime.block_on(async {
            let element = self.client.find(Locator::Css(css)).await.unwrap();
            element.clear().await.unwrap();
            element.send_keys(text).await.unwrap();
        })
    }

    fn click(&self, css: &str) {
        self.runtime.block_on(async {
            self.client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|error| panic!("{css}: {error}"))
                .click()
                .await
                .unwrap()
        })
    }

    /// Clicks a button whose form asks for confirmation, and confirms.
    fn click_and_confirm(&self, css: &str) {
        self.click(css);
        self.runtime.block_on(self.client.accept_alert()).unwrap();
    }

    fn run_script(&self, script: &str) -> Value {
        self.runtime.block_on(self.client.execute(script, Vec::new())).unwrap()
    }

    /// Waits (bounded) until `script` returns true in the page.
    fn wait_script(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + PAGE_WAIT;
        while self.run_script(script) != Value::Bool(true) {
            if std::time::Instant::now() > deadline {
                let page = self.runtime.block_on(self.client.source()).unwrap_or_default();
                panic!("timed out waiting for {what} at {}; the page is:\n{page}", self.path());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the browser has loaded a page whose path and query start so.
    fn wait_path(&self, start: &str) {
        let script = format!(
            "return document.readyState === 'complete' && (location.pathname + location.search).startsWith({})",
            json!(start)
        );
        self.wait_script(&format!("the page {start}"), &script);
    }

    fn screenshot(&self, name: &str) {
        let png = self.runtime.block_on(self.client.screenshot()).unwrap();
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).unwrap();
    }

    fn log(&self, kind: &'static str) -> Vec<Value> {
        let entries = self.runtime.block_on(self.client.issue_cmd(ReadLog(kind))).unwrap();
        entries.as_array().cloned().unwrap_or_default()
    }

    /// Every console error since the last look, and every request to another origin.
    fn assert_clean(&self, page: &str) {
        let errors: Vec<Value> = self.log("browser").into_iter().filter(|entry| entry["level"] == "SEVERE").collect();
        assert!(errors.is_empty(), "{page}: console errors: {errors:#?}");
        let mut elsewhere = Vec::new();
        for entry in self.log("performance") {
            let Some(message) = entry["message"].as_str() else { continue };
            let Ok(message) = serde_json::from_str::<Value>(message) else { continue };
            if message["message"]["method"] != "Network.requestWillBeSent" {
                continue;
            }
            let url = message["message"]["params"]["request"]["url"].as_str().unwrap_or("").to_owned();
            // The network only: chrome:// pages (the blank tab's) never leave the machine.
            let network = ["http:", "https:", "ws:", "wss:"].iter().any(|scheme| url.starts_with(scheme));
            if network && !url.starts_with(&format!("{}/", self.origin)) {
                elsewhere.push(url);
            }
        }
        assert!(elsewhere.is_empty(), "{page}: requests left the origin: {elsewhere:?}");
    }

    fn cookie(&self, name: &str) -> String {
        let cookie = self.runtime.block_on(self.client.get_named_cookie(name)).unwrap();
        cookie.value().to_owned()
    }

    fn sign_in(&self, token: &str) {
        self.runtime.block_on(self.client.delete_all_cookies()).unwrap();
        self.goto("/");
        assert!(self.path().starts_with("/login?next="), "a page without a session redirects to the login");
        self.fill("#token", token);
        self.click("#login");
        self.wait_path("/");
        self.text("#tile-running");
    }
}

impl Drop for Browser {
    /// Ends the WebDriver session, so chromedriver quits its Chromium: killing chromedriver
    /// alone (the stack does, after this) would leave the browser running. Also on a panic.
    fn drop(&mut self) {
        if let Err(error) = self.runtime.block_on(self.client.clone().close()) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "closing the browser session: {error}");
        }
    }
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|path| path.is_file()))
        .unwrap_or_else(|| panic!("{program} is not on PATH: run scripts/install-tools.sh"))
}

fn submit(stack: &Stack, file: &Path) -> String {
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    submitted["id"].as_str().unwrap_or_else(|| panic!("submit said {submitted}")).to_owned()
}

#[test]
fn people_see_and_act_on_real_runs_in_a_browser() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    let tokens = stack.write(
        "tokens",
        &format!(
            "alice operator {}\nbob viewer {}\n",
            sluice_server::auth::hash(ALICE),
            sluice_server::auth::hash(BOB)
        ),
    );
    let key = stack.write("session-key", &"k".repeat(48));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    stack.spawn(
        "server",
        &[
            "server",
            "--listen",
            &address,
            "--tokens",
            tokens.to_str().unwrap(),
            "--session-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    wait_until(Duration::from_secs(30), "the server to listen", || std::net::TcpStream::connect(&address).is_ok());
    let origin = format!("http://{address}");

    // Runs to look at: a diamond that succeeds, one that fails, and one held running until
    // the test lets it go.
    let diamond = stack.write(
        "diamond.yaml",
        "name: diamond\njobs:\n  extract: { run: noop }\n  clean: { run: noop, needs: [extract] }\n  enrich: { run: noop, needs: [extract] }\n  load: { run: noop, needs: [clean, enrich] }\n",
    );
    let succeeded = submit_and_wait(&stack, &diamond, 0)["id"].as_str().unwrap().to_owned();
    let flaky = stack.write(
        "flaky.yaml",
        "name: flaky\njobs:\n  a: { run: noop }\n  b: { run: fail, needs: [a], retry: { max_attempts: 1 }, config: { message: disk full } }\n",
    );
    let failed = submit_and_wait(&stack, &flaky, 1)["id"].as_str().unwrap().to_owned();
    let gate = stack.write("gate-open", "");
    std::fs::remove_file(&gate).unwrap();
    let held = stack.write(
        "held.yaml",
        &format!(
            "name: held\njobs:\n  first: {{ run: noop }}\n  hold: {{ run: exec, needs: [first], command: [sh, -c, 'while [ ! -e {gate} ]; do sleep 0.05; done'] }}\n  after: {{ run: noop, needs: [hold] }}\n",
            gate = gate.display()
        ),
    );
    let live = submit(&stack, &held);

    let browser = Browser::start(&mut stack, &origin);

    // Login: no session → the login page; an unknown token is refused there.
    browser.goto(&format!("/runs/{succeeded}"));
    assert!(browser.path().starts_with("/login?next="), "{}", browser.path());
    browser.fill("#token", "not-a-token");
    browser.click("#login");
    assert_eq!(browser.text("#login-error"), "That token is not known.");
    browser.screenshot("login");
    browser.log("browser"); // the refused login's 401 is logged as an error, on purpose
    browser.fill("#token", ALICE);
    browser.click("#login");
    browser.wait_path(&format!("/runs/{succeeded}"));
    browser.assert_clean("login");

    // Home: coordinators, pools, counts.
    browser.goto("/");
    assert!(browser.text("#coordinators").contains("leader"));
    let pools = browser.text("#pools");
    assert!(pools.contains("default"), "{pools}");
    assert!(browser.text("#tile-failed").starts_with('1'), "{}", browser.text("#tile-failed"));
    assert!(browser.text("#tile-running").starts_with('1'), "{}", browser.text("#tile-running"));
    assert!(browser.text("#tile-leader").contains("a coordinator leads"));
    browser.screenshot("home");
    browser.assert_clean("home");

    // Runs: every run, then filtered.
    browser.goto("/runs");
    let rows = browser.texts("#runs tbody tr");
    assert_eq!(rows.len(), 3, "{rows:?}");
    browser.fill("input[name=workflow]", "flaky");
    browser.click("#filters button");
    browser.wait_path("/runs?workflow=flaky");
    let rows = browser.texts("#runs tbody tr");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains("failed"), "{rows:?}");
    browser.goto("/runs?state=bogus");
    assert!(browser.text("#filter-error").contains("unknown state `bogus`"));
    browser.log("browser"); // its 400 is logged as an error, on purpose
    browser.goto("/runs");
    browser.screenshot("runs");
    browser.assert_clean("runs");

    // A finished run: its DAG, jobs and timeline.
    browser.goto(&format!("/runs/{succeeded}"));
    assert_eq!(browser.text("#run-state"), "succeeded");
    let nodes = browser.run_script(
        "return Array.from(document.querySelectorAll('#dag g.node')).map(n => n.dataset.job + ':' + n.getAttribute('class'))",
    );
    assert_eq!(
        nodes,
        json!([
            "extract:node state-completed",
            "clean:node state-completed",
            "enrich:node state-completed",
            "load:node state-completed"
        ])
    );
    assert_eq!(browser.run_script("return document.querySelectorAll('#dag path.edge').length"), json!(4));
    assert_eq!(browser.texts("#gantt rect.bar").len(), 4);
    browser.screenshot("run");
    // A refused action shows the refusal: nothing of a succeeded run failed.
    browser.click_and_confirm("#retry");
    let refusal = browser.text("#outcome");
    assert!(refusal.starts_with("retry: refused."), "{refusal}");
    browser.assert_clean("run");

    // The audit grid: the diamond's day (yesterday, its default window) has four completed
    // cells, one per job; the other 29 days never ran.
    browser.goto(&format!("/runs/{succeeded}"));
    browser.click("h1 a");
    browser.wait_path("/workflows/diamond/audit");
    let yesterday = (chrono::Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    let column = browser.run_script(&format!(
        "const at = Array.from(document.querySelectorAll('#grid thead th')).findIndex(h => h.dataset.window === '{yesterday}');
         return Array.from(document.querySelectorAll('#grid tbody tr')).map(row => row.dataset.job + ':' + row.children[at].className)"
    ));
    assert_eq!(
        column,
        json!([
            "extract:cell state-completed",
            "clean:cell state-completed",
            "enrich:cell state-completed",
            "load:cell state-completed"
        ])
    );
    assert_eq!(browser.texts("#grid th.window.state-missing").len(), 29);
    browser.screenshot("audit");
    browser.goto("/workflows/diamond/audit?days=0");
    assert!(browser.text("#message").contains("days must be 1 to 366, not `0`"));
    browser.log("browser"); // its 400 is logged as an error, on purpose
    browser.assert_clean("audit");

    // Backfill: the two days before the diamond's; its own day is skipped (rerun missing).
    let day = |back: i64| (chrono::Utc::now().date_naive() - chrono::Duration::days(back)).to_string();
    browser.goto("/backfills");
    browser.run_script(&format!(
        "const form = document.getElementById('new-backfill');
         form.workflow.value = 'diamond'; form.from.value = '{}'; form.to.value = '{}'; return true",
        day(3),
        day(1)
    ));
    browser.click("#preview");
    browser.wait_path("/backfills/new?");
    assert!(browser.text("#summary").starts_with("2 of 3 windows will run"), "{}", browser.text("#summary"));
    browser.screenshot("backfill-preview");
    browser.click_and_confirm("#start");
    browser.wait_path("/backfills/");
    assert!(browser.text("#outcome").starts_with("backfill_create: applied."), "{}", browser.text("#outcome"));
    browser.wait_script(
        "the backfill to succeed",
        "return document.getElementById('backfill-state') !== null && document.getElementById('backfill-state').textContent === 'succeeded'",
    );
    assert!(browser.text("#progress").starts_with("3 of 3: 2 succeeded, 0 failed, 0 running, 1 skipped"));
    browser.screenshot("backfill");
    browser.goto("/workflows/diamond/audit");
    assert_eq!(browser.texts("#grid th.window.state-completed").len(), 3, "three days processed now");
    browser.assert_clean("backfill");

    // The failed run, its job page, and a retry that runs the failed job again.
    browser.goto(&format!("/runs/{failed}"));
    assert_eq!(browser.text("#run-state"), "failed");
    browser.goto(&format!("/runs/{failed}/jobs/b"));
    assert_eq!(browser.text("#job-state"), "failed");
    assert!(browser.text("#attempts").contains("disk full"), "{}", browser.text("#attempts"));
    browser.screenshot("job");
    browser.click_and_confirm("#retry-job");
    let applied = browser.text("#outcome");
    assert!(applied.starts_with("retry: applied."), "{applied}");
    browser.goto(&format!("/runs/{failed}"));
    browser.wait_script(
        "the retried run to fail again",
        "return document.getElementById('run-state').textContent === 'failed' && document.querySelector('#jobs tr[data-job=b] td:nth-child(3)').textContent === '2'",
    );
    browser.assert_clean("job");

    // Dead letters: `b`'s, shown with their errors, replayed one and then all at once.
    browser.goto("/");
    browser.click("#tile-dlq");
    browser.wait_path("/dlq");
    browser.goto("/dlq?workflow=flaky");
    let ids = browser.run_script(
        "return Array.from(document.querySelectorAll('#dead-letters tbody tr')).map(row => row.dataset.deadLetter)",
    );
    let first = ids[0].as_str().unwrap_or_else(|| panic!("no dead letter of flaky: {ids}")).to_owned();
    browser.screenshot("dlq");
    browser.goto(&format!("/dlq/{first}"));
    assert!(browser.text("#attempts").contains("disk full"), "{}", browser.text("#attempts"));
    browser.screenshot("dead-letter");
    browser.click_and_confirm("#replay");
    browser.wait_path("/dlq?request=");
    let outcome = browser.text("#outcome");
    assert!(outcome.starts_with("replay: applied."), "{outcome}");
    assert!(!browser.exists(&format!("tr[data-dead-letter='{first}']")), "a replayed letter leaves the list");
    // The replayed `b` fails for good again: a new letter, and every one shown goes at once.
    wait_until(PAGE_WAIT, "b's next dead letter", || {
        browser.goto("/dlq?workflow=flaky");
        browser.exists("#replay-all")
    });
    browser.click_and_confirm("#replay-all");
    let outcome = browser.text("#outcome");
    assert!(outcome.starts_with("replay: ") && outcome.contains("dead letters replayed"), "{outcome}");
    assert!(!outcome.contains("refused"), "{outcome}");
    browser.assert_clean("dead letters");

    // Mark: a failed job ended by hand as succeeded; its run then succeeds.
    let failed_again = submit_and_wait(&stack, &flaky, 1)["id"].as_str().unwrap().to_owned();
    browser.goto(&format!("/runs/{failed_again}/jobs/b"));
    browser.click_and_confirm("#mark-succeeded");
    browser.wait_path(&format!("/runs/{failed_again}/jobs/b?request="));
    assert!(browser.text("#outcome").starts_with("mark: applied."), "{}", browser.text("#outcome"));
    assert_eq!(browser.text("#job-state"), "completed");
    assert!(browser.text("dl.facts").contains("succeeded by "), "{}", browser.text("dl.facts"));
    browser.goto(&format!("/runs/{failed_again}"));
    assert_eq!(browser.text("#run-state"), "succeeded");
    browser.assert_clean("mark");

    // A bulk retry by filter: every failed run of a workflow, counted first, then one request.
    let brittle =
        stack.write("brittle.yaml", "name: brittle\njobs:\n  only: { run: fail, retry: { max_attempts: 1 } }\n");
    let brittle_runs: Vec<String> =
        (0..2).map(|_| submit_and_wait(&stack, &brittle, 1)["id"].as_str().unwrap().to_owned()).collect();
    browser.goto("/runs?workflow=brittle&state=failed");
    assert_eq!(browser.texts("#runs tbody tr").len(), 2);
    browser.click("#bulk-retry");
    browser.wait_path("/runs/bulk?");
    assert!(browser.text("#bulk-count").starts_with("This will retry 2 runs"), "{}", browser.text("#bulk-count"));
    assert_eq!(browser.texts("#bulk-runs tbody tr").len(), 2);
    browser.screenshot("bulk-retry");
    browser.click_and_confirm("#bulk-confirm");
    browser.wait_path("/runs?");
    let outcome = browser.text("#outcome");
    assert!(outcome.starts_with("bulk_retry: applied. 2 of 2 runs retried"), "{outcome}");
    for id in &brittle_runs {
        wait_until(PAGE_WAIT, "a bulk-retried run to fail again", || {
            let output = stack.sluice(&["status", id, "-o", "json"]);
            let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            status["state"] == "failed" && status["jobs"][0]["attempts"] == 2
        });
    }
    browser.goto("/runs?workflow=brittle&state=failed");
    assert_eq!(browser.texts("#runs tbody tr").len(), 2, "both failed again, each on its second attempt");
    browser.assert_clean("bulk retry");

    // Retry with an edited spec: the form holds the run's YAML; the fixed one succeeds.
    let mended = &brittle_runs[0];
    browser.goto(&format!("/runs/{mended}"));
    browser.click("#retry-edited");
    browser.wait_path(&format!("/runs/{mended}/retry"));
    let yaml = browser.run_script("return document.getElementById('spec').value");
    assert!(yaml.as_str().is_some_and(|yaml| yaml.contains("run: fail")), "{yaml}");
    browser.run_script(
        "const spec = document.getElementById('spec'); spec.value = spec.value.replace('run: fail', 'run: noop'); return true",
    );
    browser.screenshot("retry-edited");
    browser.click_and_confirm("#retry-with-spec");
    browser.wait_path(&format!("/runs/{mended}?request="));
    assert!(browser.text("#outcome").starts_with("retry: applied."), "{}", browser.text("#outcome"));
    browser.wait_script(
        "the run retried with the fixed spec to succeed",
        "return document.getElementById('run-state').textContent === 'succeeded'",
    );
    // A spec that does not parse is refused at once, saying so.
    browser.goto(&format!("/runs/{}/retry", brittle_runs[1]));
    browser.run_script("document.getElementById('spec').value = 'name: [broken'; return true");
    browser.click_and_confirm("#retry-with-spec");
    assert!(browser.text("#message").contains("the edited spec"), "{}", browser.text("#message"));
    browser.log("browser"); // the 400 is logged by the browser, on purpose
    browser.assert_clean("retry with an edited spec");

    // Schedules: the next five fire times in the schedule's zone; pause, resume, run now.
    let nightly = stack.write(
        "nightly.yaml",
        "name: nightly\ntimezone: Europe/Berlin\nschedule: { cron: \"30 2 * * *\", window: yesterday }\njobs:\n  only: { run: noop }\n",
    );
    stack.sluice_json(&["schedule", "apply", nightly.to_str().unwrap()], 0);
    browser.goto("/schedules");
    let ticks = browser.texts("tr[data-schedule=nightly] td.ticks div");
    assert_eq!(ticks.len(), 5, "{ticks:?}");
    assert!(ticks.iter().all(|tick| tick.ends_with("02:30 CET") || tick.ends_with("02:30 CEST")), "{ticks:?}");
    browser.screenshot("schedules");
    browser.click_and_confirm("tr[data-schedule=nightly] button.pause");
    browser.wait_path("/schedules?request=");
    assert!(browser.text("#outcome").starts_with("schedule_pause: applied."), "{}", browser.text("#outcome"));
    assert_eq!(browser.text("tr[data-schedule=nightly] .pill"), "paused");
    assert_eq!(browser.text("tr[data-schedule=nightly] td.ticks"), "-", "a paused schedule fires at no time");
    browser.click_and_confirm("tr[data-schedule=nightly] button.resume");
    browser.wait_path("/schedules?request=");
    assert_eq!(browser.text("tr[data-schedule=nightly] .pill"), "active");
    browser.click_and_confirm("tr[data-schedule=nightly] button.trigger");
    browser.wait_path("/runs/");
    browser.wait_script(
        "the triggered run to succeed",
        "return document.getElementById('run-state') !== null && document.getElementById('run-state').textContent === 'succeeded'",
    );
    assert!(browser.text("dl.facts").contains("schedule:nightly"), "{}", browser.text("dl.facts"));
    browser.assert_clean("schedules");

    // A live run: `hold` runs, then turns completed without a reload once let go.
    browser.goto(&format!("/runs/{live}"));
    browser.wait_script(
        "hold to be running",
        "return document.querySelector('#dag g.node[data-job=hold]').classList.contains('state-running')",
    );
    browser.run_script("window.sluiceNoReload = true; return true");
    browser.screenshot("run-live");
    std::fs::write(&gate, "").unwrap();
    browser.wait_script(
        "the DAG to show the run finished",
        "return document.querySelector('#dag g.node[data-job=after]').classList.contains('state-completed') && document.getElementById('run-state').textContent === 'succeeded'",
    );
    assert_eq!(browser.run_script("return window.sluiceNoReload === true"), json!(true), "the page did not reload");
    browser.assert_clean("live run");

    // A running job's log: its lines so far, then the rest as it logs them, without a
    // reload; stderr set apart; the download holds the whole attempt.
    let talk_gate = gate.with_file_name("talk-gate");
    let talker = stack.write(
        "talker.yaml",
        &format!(
            "name: talker\njobs:\n  talk: {{ run: exec, command: [sh, -c, 'echo waiting for the gate; echo a warning >&2; while [ ! -e {gate} ]; do sleep 0.05; done; echo through the gate'] }}\n",
            gate = talk_gate.display()
        ),
    );
    let talking = submit(&stack, &talker);
    browser.goto(&format!("/runs/{talking}/jobs/talk"));
    browser.wait_script(
        "the log to show what the job said so far",
        "return document.getElementById('log').textContent.includes('waiting for the gate') && document.getElementById('log').textContent.includes('a warning')",
    );
    browser.run_script("window.sluiceNoReload = true; return true");
    browser.screenshot("job-log");
    std::fs::write(&talk_gate, "").unwrap();
    browser.wait_script(
        "the log to follow the attempt to its end",
        "const log = document.getElementById('log'); return log.dataset.ended === '1' && log.textContent.includes('through the gate')",
    );
    assert_eq!(browser.run_script("return window.sluiceNoReload === true"), json!(true), "the page did not reload");
    assert!(browser.text("#log .log-stderr").contains("a warning"), "{}", browser.text("#log"));
    let downloaded =
        browser.run_script("return fetch(document.getElementById('log-download').href).then((r) => r.text())");
    let downloaded = downloaded.as_str().unwrap_or_default();
    assert!(
        downloaded.contains(" stdout waiting for the gate\n") && downloaded.ends_with(" stdout through the gate\n"),
        "{downloaded}"
    );
    browser.assert_clean("job log");

    // Cancel: a second held run, cancelled from its page.
    std::fs::remove_file(&gate).unwrap();
    let to_cancel = submit(&stack, &held);
    browser.goto(&format!("/runs/{to_cancel}"));
    browser.wait_script(
        "hold to be running",
        "return document.querySelector('#dag g.node[data-job=hold]').classList.contains('state-running')",
    );
    browser.click_and_confirm("#cancel");
    let outcome = browser.text("#outcome");
    assert!(outcome.starts_with("cancel: applied."), "{outcome}");
    assert!(outcome.contains("/alice)"), "the action carries who asked: {outcome}");
    browser.wait_script(
        "the run to show cancelled",
        "return document.getElementById('run-state').textContent === 'cancelled'",
    );

    // The audit of actions: the cancel just made is the newest, applied, by alice; the
    // refused retry is there with its reason.
    browser.click("nav a[href='/requests']");
    browser.wait_path("/requests");
    let newest = browser.text("#requests tbody tr:first-child");
    assert!(newest.contains("cancel") && newest.contains("applied") && newest.contains("/alice"), "{newest}");
    let rows = browser.texts("#requests tbody tr");
    assert!(rows.iter().any(|row| row.contains("retry") && row.contains("refused")), "{rows:?}");
    browser.screenshot("requests");
    browser.assert_clean("requests");

    // Start a run: of a workflow known here, for a day picked in its zone, with a parameter;
    // the page lands on the run, which says hello.
    let greet = stack.write(
        "greet.yaml",
        "name: greet\ntimezone: America/New_York\nparams: { who: world }\njobs:\n  say: { run: exec, command: [echo, 'hello {{params.who}}'] }\n",
    );
    let applied = stack.sluice(&["workflow", "apply", greet.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    browser.goto("/runs");
    browser.click("#start-a-run");
    browser.wait_path("/runs/new");
    assert!(browser.texts("#workflow option").contains(&"greet".to_owned()), "{:?}", browser.texts("#workflow option"));
    browser.run_script("document.getElementById('workflow').value = 'greet'; return true");
    browser.click("#choose");
    browser.wait_path("/runs/new?workflow=greet");
    assert!(browser.text("#start-run").contains("in America/New_York"), "{}", browser.text("#start-run"));
    assert!(browser.text("#source").contains("sluice workflow apply"), "{}", browser.text("#source"));
    assert_eq!(browser.run_script("return document.getElementById('param-who').value"), json!("world"), "the default");
    browser.run_script("document.getElementById('day').value = '2024-03-01'; return true");
    browser.fill("#param-who", "sluice");
    browser.screenshot("run-new");
    browser.click_and_confirm("#start");
    browser.wait_path("/runs/");
    browser.wait_script(
        "the started run to succeed",
        "return document.getElementById('run-state') !== null && document.getElementById('run-state').textContent === 'succeeded'",
    );
    let facts = browser.text("dl.facts");
    assert!(facts.contains("2024-03-01") && facts.contains("sluice"), "{facts}");
    let started = browser.path().trim_start_matches("/runs/").to_owned();
    browser.goto("/runs?workflow=greet&window_from=2024-03-01&window_to=2024-03-01&sort=window");
    let rows = browser.texts("#runs tbody tr");
    assert!(rows.len() == 1 && rows[0].contains("2024-03-01"), "only the run of that day: {rows:?}");
    browser.goto(&format!("/runs/{started}/jobs/say"));
    assert!(browser.text("#log").contains("hello sluice"), "{}", browser.text("#log"));
    browser.assert_clean("start a run");

    // CSRF: the session's cookie without the form's token, and a post from elsewhere.
    let session = browser.cookie("sluice_session");
    let cookie = format!("sluice_session={session}");
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, _) =
        request(&address, "POST", &format!("/runs/{failed}/retry"), &[("Cookie", cookie.as_str()), form], b"csrf=nope")
            .unwrap();
    assert_eq!(status, 403, "a form without this session's CSRF token");
    let (status, body) = request(
        &address,
        "POST",
        &format!("/api/v1/runs/{failed}/retry"),
        &[("Authorization", &format!("Bearer {ALICE}")), ("Origin", "https://evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");

    // A viewer: no buttons, and acting anyway is refused.
    browser.sign_in(BOB);
    browser.goto(&format!("/runs/{failed}"));
    assert!(!browser.exists("#retry") && !browser.exists("#cancel"), "a viewer sees no actions");
    browser.goto("/runs?workflow=brittle");
    assert!(!browser.exists("#bulk-retry"), "a viewer sees no bulk actions");
    browser.goto(&format!("/runs/{failed}"));
    let status = browser.runtime.block_on(browser.client.execute_async(
        "const done = arguments[arguments.length - 1];
         const csrf = document.querySelector('input[name=csrf]').value;
         fetch(location.pathname + '/retry', {method: 'POST', body: new URLSearchParams({csrf})}).then(r => done(r.status));",
        Vec::new(),
    ));
    assert_eq!(status.unwrap(), json!(403));
    browser.log("browser"); // the refused fetch is logged as an error, on purpose

    // Log out: the session ends.
    browser.click("header form button");
    browser.wait_path("/login");
    browser.goto("/runs");
    assert!(
        browser.path().starts_with("/login?next=%2Fruns") || browser.path().starts_with("/login?next=/runs"),
        "{}",
        browser.path()
    );
}
