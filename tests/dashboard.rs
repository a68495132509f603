//! The dashboard at `/ui` in a real headless Chromium (Debian's `chromium` and `chromedriver`, driven
//! over WebDriver by fantoccini) against the real stack: api, provisioner and reaper over Redis,
//! RabbitMQ and Docker. One walk through a user's path: sign in (a refused key first), a job with a
//! bad schedule (the field's message shows), a good one, run it now, its run live to `succeeded` with
//! its output and its instance, edit, disable, the overview's charts with data, phone width, delete.
//! Each page's screenshot is written to `target/ui-screenshots/` (or `$SPOT_UI_SCREENSHOTS`).
//!
//! Also, without a browser: what `/ui` serves (versioned assets, the content security policy) and the
//! bounds of `GET /v1/jobs?last_runs=`.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

/// A chromedriver process on a port of its own, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(Duration::from_secs(20), "chromedriver answers", || async {
            reqwest::get(&status)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        Driver { child, url }
    }

    /// A headless browser session at a desktop size.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-extensions", "--no-first-run",
                    "--window-size=1280,900"],
            }),
        );
        // Chromium now and then dies while starting on a busy machine ("session not created"); a
        // second launch is a new process, so it is tried up to three times.
        let mut failures = Vec::new();
        while failures.len() < 3 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(browser) => return browser,
                Err(err) => failures.push(err.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("no Chromium session in three tries: {failures:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("SPOT_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/deps/dashboard-… → target/ui-screenshots
            let exe = std::env::current_exe().expect("the test's path");
            exe.ancestors()
                .nth(3)
                .map(|target| target.join("ui-screenshots"))
                .unwrap_or_else(|| std::env::temp_dir().join("ui-screenshots"))
        });
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("the screenshot written");
    eprintln!("screenshot: {}", path.display());
}

/// Waits for an element, for up to `secs`.
async fn wait_for(browser: &Client, css: &str, secs: u64) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(Duration::from_secs(secs))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css} did not appear within {secs} s: {err}"))
}

/// Waits until the element's text contains `wanted`; returns the text.
async fn wait_for_text(browser: &Client, css: &str, wanted: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(node) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = node.text().await {
                if text.contains(wanted) {
                    return text;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css} never showed {wanted:?} within {secs} s; last: {last:?}");
}

/// Waits until no element matches.
async fn wait_gone(browser: &Client, css: &str, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while browser
        .find_all(Locator::Css(css))
        .await
        .is_ok_and(|found| !found.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{css} still there after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `act` on the element `css` finds, finding it afresh after a failure for up to 10 s: the
/// lists and the run's summary are drawn again every few seconds, so an element found a moment ago
/// can be stale by the time it is used.
async fn on_element<T, F, Fut>(browser: &Client, css: &str, act: F) -> T
where
    F: Fn(Element) -> Fut,
    Fut: Future<Output = Result<T, CmdError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let error = match browser.find(Locator::Css(css)).await {
            Ok(element) => match act(element).await {
                Ok(done) => return done,
                Err(err) => err,
            },
            Err(err) => err,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{css} could not be used within 10 s: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    on_element(browser, css, |element| async move { element.text().await }).await
}

async fn attr_of(browser: &Client, css: &str, name: &str) -> Option<String> {
    on_element(
        browser,
        css,
        |element| async move { element.attr(name).await },
    )
    .await
}

async fn fill(browser: &Client, css: &str, text: &str) {
    on_element(browser, css, |input| async move {
        input.clear().await?;
        input.send_keys(text).await
    })
    .await
}

async fn click(browser: &Client, css: &str) {
    wait_for(browser, css, 10).await;
    on_element(browser, css, |element| async move { element.click().await }).await
}

async fn job_json(app: &TestApp, id: &str) -> (u16, Value) {
    let response = app.get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_user_drives_a_job_through_the_dashboard() {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    // Neighbours for the grid and the charts: a job firing every second, one whose container fails.
    app.create_job(
        ACCOUNT_KEY,
        json!({"name": "heartbeat", "group": "ops", "schedule": "* * * * * *",
            "runner": {"type": "dummy", "template": "beat"}}),
    )
    .await;
    let failing = app
        .create_job(
            ACCOUNT_KEY,
            json!({"name": "nightly-report", "group": "reports", "schedule": "0 3 * * *",
                "timezone": "America/New_York",
                "policies": {"jitter_secs": 300, "exclude": ["0 3 * * sat,sun"],
                    "max_runs": 30, "on_last_run": "disable"},
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo no data; exit 3'"}}),
        )
        .await;
    // A name that would run script if it were ever parsed as HTML.
    let hostile_name = "<img src=x onerror=\"document.title='pwned'\">";
    let hostile = app
        .create_job(
            ACCOUNT_KEY,
            json!({"name": hostile_name, "schedule": "0 0 1 1 *",
                "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let run_now = app.url(&format!("/v1/jobs/{failing}/run"));
    let accepted = app
        .client
        .post(&run_now)
        .header("X-Auth-Token", ACCOUNT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    // An array job, whose fire's run shows its copies as a grid.
    let array = app
        .create_job(
            ACCOUNT_KEY,
            json!({"name": "shards", "schedule": "@yearly",
                "runner": {"type": "container", "image": image,
                    "cmd": "sh -c 'echo shard $SPOT_ARRAY_INDEX'", "array_size": 3}}),
        )
        .await;
    app.run_now(&array).await;

    // Sign in: a wrong key is refused on the form; the right one, typed and entered from the
    // keyboard, opens the jobs page.
    browser.goto(&app.url("/ui")).await.expect("the dashboard");
    wait_for(&browser, "#sign-in #key", 10).await;
    fill(&browser, "#key", "not-a-key\u{E007}").await;
    wait_for_text(&browser, "#sign-in-error", "refused", 10).await;
    screenshot(&browser, "01-sign-in-refused").await;
    fill(&browser, "#key", &format!("{ACCOUNT_KEY}\u{E007}")).await;
    wait_for_text(&browser, "#jobs", "heartbeat", 10).await;
    let stored: Value = browser
        .execute(
            "return [sessionStorage.getItem('spot.key'), location.href]",
            vec![],
        )
        .await
        .expect("script runs");
    assert_eq!(stored[0], ACCOUNT_KEY, "the key is kept for the tab");
    assert!(
        !stored[1].as_str().unwrap_or_default().contains(ACCOUNT_KEY),
        "the key is never in the URL: {stored}"
    );

    // A job with a bad schedule: the api's message shows beside the schedule field.
    click(&browser, "#new-job").await;
    wait_for(&browser, "#job-form", 10).await;
    fill(&browser, "#f-name", "ui-hello").await;
    fill(&browser, "#f-schedule", "every full moon").await;
    fill(&browser, "#f-runner\\.image", image).await;
    fill(
        &browser,
        "#f-runner\\.cmd",
        "sh -c 'echo hello from the dashboard; sleep 3; echo done'",
    )
    .await;
    click(&browser, "#save-job").await;
    let message = wait_for_text(&browser, "#f-schedule-error", "schedule", 10).await;
    assert!(!message.is_empty());
    let invalid = attr_of(&browser, "#f-schedule", "aria-invalid").await;
    assert_eq!(
        invalid.as_deref(),
        Some("true"),
        "the field is marked invalid"
    );
    screenshot(&browser, "02-job-form-bad-schedule").await;
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(4),
        "a refused job changes nothing"
    );

    // A good one: yearly, so only run-now makes it run.
    fill(&browser, "#f-schedule", "0 0 1 1 *").await;
    fill(&browser, "#f-timezone", "Europe/Berlin").await;
    click(&browser, "#save-job").await;
    wait_for(&browser, "#next-fires", 10).await;
    let url = browser.current_url().await.unwrap();
    let job_id = url
        .fragment()
        .and_then(|f| f.strip_prefix("/jobs/"))
        .expect("the job's page")
        .to_string();
    // Read in one script, so that no row can go stale between finding and reading it.
    let next_rows: Vec<String> = serde_json::from_value(
        browser
            .execute(
                "return [...document.querySelectorAll('#next-fires tbody tr')].map(r => r.innerText)",
                vec![],
            )
            .await
            .expect("script runs"),
    )
    .expect("the rows' texts");
    assert_eq!(next_rows.len(), 10, "the next 10 fires");
    let first = &next_rows[0];
    assert!(
        first.contains("01-01 00:00:00") && first.contains("12-31 23:00:00Z"),
        "a fire in Berlin's midnight and in UTC: {first}"
    );
    screenshot(&browser, "03-job").await;

    // Run it now; its run appears on the job's page; its own page follows the output live.
    click(&browser, ".run-now").await;
    wait_for(&browser, "#runs .timeline-head a", 20).await;
    click(&browser, "#runs .timeline-head a").await;
    wait_for(&browser, "#run-summary", 10).await;
    wait_for_text(&browser, "#output", "hello from the dashboard", 60).await;
    screenshot(&browser, "04-run-live").await;
    wait_for_text(&browser, "#run-summary", "succeeded", 60).await;
    wait_for_text(&browser, "#output", "done", 10).await;
    let exit_code = text_of(&browser, "#run-summary dd[data-term='Exit code']").await;
    assert_eq!(exit_code, "0");
    let instance = wait_for_text(&browser, "#instance", "terminated", 60).await;
    assert!(
        instance.contains("local"),
        "the instance's provider: {instance}"
    );
    assert!(
        !instance.contains("not yet"),
        "the lifetime runs to termination: {instance}"
    );
    screenshot(&browser, "05-run-ended").await;

    // Edit: the new name shows on the job's page and in the api.
    browser
        .goto(&app.url(&format!("/ui#/jobs/{job_id}/edit")))
        .await
        .unwrap();
    wait_for(&browser, "#job-form", 10).await;
    fill(&browser, "#f-name", "ui-hello-edited").await;
    click(&browser, "#save-job").await;
    wait_for_text(&browser, "h1", "ui-hello-edited", 10).await;
    assert_eq!(job_json(&app, &job_id).await.1["name"], "ui-hello-edited");

    // The jobs list: the run as a grid cell told by its letter, the name filter.
    browser.goto(&app.url("/ui#/jobs")).await.unwrap();
    let row = format!("#jobs tr[data-job='{job_id}']");
    let cell = format!("{row} .grid .cell");
    wait_for(&browser, &cell, 10).await;
    assert_eq!(text_of(&browser, &cell).await, "S");
    wait_for_text(
        &browser,
        &format!("#jobs tr[data-job='{failing}'] .grid"),
        "F",
        60,
    )
    .await;
    assert!(attr_of(&browser, &cell, "aria-label")
        .await
        .unwrap_or_default()
        .contains("succeeded"));
    let shown = text_of(&browser, &format!("#jobs tr[data-job='{hostile}'] td a")).await;
    assert_eq!(shown, hostile_name, "a name is shown as text");
    assert_ne!(browser.title().await.unwrap(), "pwned", "and never runs");
    screenshot(&browser, "06-jobs").await;
    fill(&browser, "#filter-name", "no-such-job").await;
    wait_for_text(&browser, "#jobs", "No jobs match", 10).await;
    fill(&browser, "#filter-name", "edited").await;
    wait_for(&browser, &row, 10).await;
    // The name filter leaves the one job.
    wait_gone(
        &browser,
        &format!("#jobs tr[data-job]:not([data-job='{job_id}'])"),
        10,
    )
    .await;

    // Disable from the list.
    click(&browser, &format!("{row} .disable")).await;
    wait_for(&browser, &format!("{row} .enable"), 10).await;
    assert_eq!(job_json(&app, &job_id).await.1["enabled"], false);

    // A jittered job says so beside the fires it shows: 03:00 plus under five minutes.
    browser
        .goto(&app.url(&format!("/ui#/jobs/{failing}")))
        .await
        .unwrap();
    wait_for_text(&browser, "#jitter", "up to 300 s after its instant", 10).await;
    // A finite schedule says how many fires it has left, and what then.
    wait_for_text(
        &browser,
        "#remaining-runs",
        "30 of 30 scheduled fires; then the job disables itself",
        10,
    )
    .await;
    let first_fire = wait_for_text(&browser, "#next-fires tbody tr", "03:0", 10).await;
    assert!(first_fire.contains("03:0"), "{first_fire}");
    // Its weekends are excluded: the page names the pattern and the instants it skips.
    wait_for_text(&browser, "#exclusions", "0 3 * * sat,sun", 10).await;
    wait_for_text(&browser, "#skipped-fires", "03:00:00", 10).await;

    // Backfill its last week from the form (the inputs set by script: a datetime field's typing is
    // the browser's locale's): the backfill shows with its runs, and its runs carry its mark.
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7)).format("%Y-%m-%dT%H:%M:%S");
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S");
    browser
        .execute(
            &format!(
                "document.querySelector('#backfill-from').value = '{week_ago}';
                 document.querySelector('#backfill-to').value = '{hour_ago}';
                 document.querySelector('#backfill-concurrency').value = '2';"
            ),
            vec![],
        )
        .await
        .expect("script runs");
    click(&browser, "#backfill-submit").await;
    let backfill_row = wait_for_text(&browser, "#backfills tbody tr", "Z", 10).await;
    assert!(
        backfill_row.contains("running") || backfill_row.contains("done"),
        "{backfill_row}"
    );
    let listed: Value = app
        .get(&format!("/v1/jobs/{failing}/backfills"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    let total = listed["backfills"][0]["total"].as_u64().unwrap();
    assert!((3..=5).contains(&total), "weekdays of a week: {listed}");
    screenshot(&browser, "06b-backfill").await;

    // Pause it with a note typed into the prompt: its page shows the note and the flag; resume.
    click(&browser, ".pause").await;
    let question = eventually(Duration::from_secs(10), "the pause prompt", || async {
        browser.get_alert_text().await.ok()
    })
    .await;
    assert!(question.contains("why?"), "{question}");
    browser
        .send_alert_text("bad data upstream, INC-9")
        .await
        .unwrap();
    browser.accept_alert().await.unwrap();
    wait_for_text(&browser, "#pause-note", "bad data upstream, INC-9", 10).await;
    assert_eq!(
        job_json(&app, &failing).await.1["paused"]["note"],
        "bad data upstream, INC-9"
    );
    wait_for_text(&browser, "h1", "paused", 10).await;
    click(&browser, ".resume").await;
    wait_for(&browser, ".pause", 10).await;
    assert!(job_json(&app, &failing).await.1["paused"].is_null());

    // The overview draws its charts from data: this minute's fire, its lateness, the run's state.
    browser.goto(&app.url("/ui#/overview")).await.unwrap();
    for chart in ["#chart-fires", "#chart-lateness", "#chart-states"] {
        wait_for(&browser, &format!("{chart} svg rect"), 15).await;
    }
    wait_for_text(&browser, ".tiles", "Dead letters", 10).await;
    screenshot(&browser, "07-overview").await;

    // The job's audit log: its create, and the edit made through the form with its diff.
    browser
        .goto(&app.url(&format!("/ui#/audit/{job_id}")))
        .await
        .unwrap();
    wait_for_text(&browser, "#audit", "edit", 10).await;
    let audit = text_of(&browser, "#audit").await;
    assert!(
        audit.contains("create") && audit.contains("ui-hello-edited") && audit.contains("key-"),
        "{audit}"
    );
    screenshot(&browser, "07b-audit").await;

    // The array fire's run: its three copies as cells in index order, each a link to its run.
    let parent = eventually(
        Duration::from_secs(120),
        "the array fire to end",
        || async {
            app.runs(&array)
                .await
                .into_iter()
                .find(|run| ended(run).is_some())
        },
    )
    .await;
    browser
        .goto(&app.url(&format!("/ui#/runs/{}", parent["id"].as_str().unwrap())))
        .await
        .unwrap();
    wait_for_text(&browser, "#copies-tally", "3 succeeded", 10).await;
    assert_eq!(
        text_of(&browser, "#copies")
            .await
            .replace(char::is_whitespace, ""),
        "SSS"
    );
    screenshot(&browser, "07c-array").await;
    click(&browser, "#copies .cell[data-index='2']").await;
    wait_for_text(&browser, "#array-copy", "index 2 of 3", 10).await;
    wait_for_text(&browser, "#output", "shard 2", 10).await;

    // Phone width: the jobs table turns into cards and nothing is cut off sideways.
    browser.set_window_size(390, 844).await.unwrap();
    browser.goto(&app.url("/ui#/jobs")).await.unwrap();
    wait_for(&browser, &format!("{row} .grid .cell"), 10).await;
    let overflow: Value = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "no sideways scroll: {overflow}"
    );
    screenshot(&browser, "08-jobs-phone").await;
    browser.set_window_size(1280, 900).await.unwrap();

    // Delete, confirming.
    browser
        .goto(&app.url(&format!("/ui#/jobs/{job_id}")))
        .await
        .unwrap();
    click(&browser, ".delete").await;
    let question = eventually(Duration::from_secs(10), "a confirmation", || async {
        browser.get_alert_text().await.ok()
    })
    .await;
    assert!(question.contains("Delete"), "{question}");
    browser.accept_alert().await.unwrap();
    wait_for(&browser, "#jobs", 10).await;
    wait_gone(&browser, &row, 10).await;
    assert_eq!(job_json(&app, &job_id).await.0, 404);

    browser.close().await.ok();
    drop(driver);
    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_with_versioned_assets_and_a_strict_policy() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let page = app.client.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    let script = html
        .split('"')
        .find(|part| part.starts_with("/ui/assets/") && part.ends_with("/app.js"))
        .expect("the script's versioned path")
        .to_string();
    let asset = app.client.get(app.url(&script)).send().await.unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
    assert!(asset.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(asset.text().await.unwrap().contains("X-Auth-Token"));
    let stale = app
        .client
        .get(app.url("/ui/assets/0.0.0-000000/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 404, "another version's asset is not served");
    let unknown = script.replace("app.js", "secrets.txt");
    assert_eq!(
        app.client
            .get(app.url(&unknown))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The grid's data: bounded, and the runs of each job newest first.
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"name": "grid", "schedule": "0 0 1 1 *", "runner": {"type": "dummy", "template": "hi"}}),
        )
        .await;
    let too_many = app.get("/v1/jobs?last_runs=26", ACCOUNT_KEY).await;
    assert_eq!(too_many.status(), 400);
    let body: Value = too_many.json().await.unwrap();
    assert_eq!(body["field"], "last_runs");
    let listed: Value = app
        .get("/v1/jobs?last_runs=5", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(listed["jobs"][0]["last_runs"], json!([]));
    assert!(
        listed["jobs"][0]["next_fire_at"].is_string(),
        "a listing shows each job's next fire: {listed}"
    );
    let plain: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert!(
        plain["jobs"][0].get("last_runs").is_none(),
        "only when asked"
    );

    // The overview's own data answers for a signed-in caller only.
    assert_eq!(app.get("/v1/overview", "wrong").await.status(), 403);
    let overview: Value = app
        .get("/v1/overview", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(overview["fires_per_minute"].as_array().unwrap().len(), 60);
    assert_eq!(overview["dead_letters"], 0);
    app.service.stop().await;
}
