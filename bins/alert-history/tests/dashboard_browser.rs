//! The dashboard in a real headless Chromium (driven over chromedriver with
//! fantoccini): over seeded data, the numbers and rows it shows match the
//! JSON API; a screenshot is saved as `<target dir>/dashboard.png`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alert_history::{Config, Service};
use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

fn find(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH: install it with `{INSTALL}`"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
}

/// chromedriver on a free port, killed on drop.
struct Driver(#[allow(dead_code)] tokio::process::Child, u16);

impl Driver {
    async fn start() -> Driver {
        let chromedriver = find("chromedriver");
        find("chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}); install with `{INSTALL}`")
            });
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Driver(child, port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen on port {port}");
    }
}

fn ago(minutes: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn alert(
    name: &str,
    instance: &str,
    severity: &str,
    ns: &str,
    starts: i64,
    ends: Option<i64>,
) -> Value {
    json!({
        "status": if ends.is_some() { "resolved" } else { "firing" },
        "labels": { "alertname": name, "instance": instance, "severity": severity, "namespace": ns, "job": "node" },
        "annotations": { "summary": format!("{name} on {instance}") },
        "startsAt": ago(starts),
        "endsAt": ends.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), ago),
        "generatorURL": "http://prometheus.local/graph",
    })
}

async fn seed(client: &reqwest::Client, base: &str) {
    let mut deliveries = vec![
        vec![
            alert("DiskFull", "node-1", "critical", "prod", 300, None),
            alert("DiskFull", "node-2", "warning", "prod", 200, None),
            alert("HighLatency", "api-1", "warning", "payments", 90, None),
            alert("CertExpiring", "ingress", "info", "edge", 600, None),
        ],
        vec![alert(
            "MemoryPressure",
            "node-3",
            "warning",
            "batch",
            700,
            Some(650),
        )],
        vec![alert("Watchdog", "am", "none", "monitoring", 1200, None)],
        // A name with spaces and quotes: a click must search for all of it.
        vec![alert(
            "Disk \"root\" full",
            "node-9",
            "info",
            "prod",
            400,
            Some(390),
        )],
    ];
    // A flapping alert: five periods, four resolved.
    for i in 0..5 {
        let start = 1000 - i * 180;
        deliveries.push(vec![alert(
            "QueueBacklog",
            "worker-1",
            "critical",
            "jobs",
            start,
            None,
        )]);
        if i < 4 {
            deliveries.push(vec![alert(
                "QueueBacklog",
                "worker-1",
                "critical",
                "jobs",
                start,
                Some(start - 60),
            )]);
        }
    }
    for alerts in deliveries {
        let r = client
            .post(format!("{base}/webhook"))
            .json(&support::payload(alerts))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_what_the_api_says() {
    let db = support::sqlite().await;
    let service = Service::start(&Config::for_database(&db.url))
        .await
        .unwrap();
    let base = format!("http://{}", service.local_addr());
    let http = reqwest::Client::new();
    seed(&http, &base).await;
    let overview: Value = http
        .get(format!("{base}/api/dashboard/overview?hours=24"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["summary"]["firing_now"], 6, "{overview}");

    // reqwest and fantoccini pull in both rustls providers: pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": find("chromium"),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1300,1900", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("chromedriver session");

    let result = async {
        browser.goto(&format!("{base}/dashboard")).await?;
        browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css("body[data-loaded='true']"))
            .await?;
        let text = |sel: &'static str| {
            let browser = browser.clone();
            async move { browser.find(Locator::Css(sel)).await?.text().await }
        };
        assert_eq!(
            text("#firing-count").await?,
            overview["summary"]["firing_now"].to_string()
        );
        assert_eq!(
            text("#resolved-count").await?,
            overview["summary"]["resolved_now"].to_string()
        );
        assert_eq!(
            text("#total-events").await?,
            overview["total_events"].to_string()
        );
        assert_eq!(
            text("#unique-alerts").await?,
            overview["unique_alerts"].to_string()
        );

        // Firing-now rows: same alerts, same order as the API.
        let rows = browser
            .find_all(Locator::Css("#firing-table tbody tr"))
            .await?;
        let api_firing = overview["firing"].as_array().unwrap();
        assert_eq!(rows.len(), api_firing.len());
        for (row, api) in rows.iter().zip(api_firing) {
            assert_eq!(
                row.attr("data-fingerprint").await?.as_deref(),
                api["fingerprint"].as_str()
            );
            let first_cell = row.find(Locator::Css("td")).await?.text().await?;
            assert_eq!(first_cell, api["alertname"].as_str().unwrap());
        }
        // Top and flapping tables.
        let top = browser
            .find_all(Locator::Css("#top-table tbody tr"))
            .await?;
        assert_eq!(top.len(), overview["top_alerts"].as_array().unwrap().len());
        let first_top = top[0].text().await?;
        assert!(
            first_top.starts_with(overview["top_alerts"][0]["alertname"].as_str().unwrap()),
            "{first_top}"
        );
        let flapping = browser
            .find_all(Locator::Css("#flapping-table tbody tr td:first-child"))
            .await?;
        assert_eq!(flapping[0].text().await?, "QueueBacklog");
        assert_eq!(overview["flapping_alerts"][0]["alertname"], "QueueBacklog");
        // The chart has one firing bar per bucket and its totals match.
        let charts: Value = http
            .get(format!("{base}/api/dashboard/charts?hours=24&buckets=48"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let bars = browser
            .find_all(Locator::Css("#chart rect[data-firing]"))
            .await?;
        assert_eq!(bars.len(), 48);
        let mut shown = 0i64;
        for bar in &bars {
            shown += bar
                .attr("data-firing")
                .await?
                .unwrap()
                .parse::<i64>()
                .unwrap();
        }
        let api_total: i64 = charts["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["firing"].as_i64().unwrap())
            .sum();
        assert_eq!(shown, api_total);

        // Search by label shows what /history answers.
        let input = browser.find(Locator::Css("#search-labels")).await?;
        input.clear().await?;
        input.send_keys("severity=critical").await?;
        browser
            .find(Locator::Css("#search button"))
            .await?
            .click()
            .await?;
        let api_rows: Vec<Value> = http
            .get(format!("{base}/history?limit=50&severity=critical"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath(&format!(
                "//table[@id='history-table']/tbody[count(tr)={}]",
                api_rows.len()
            )))
            .await?;

        // Clicking a firing alert opens its timeline.
        browser
            .find(Locator::XPath(
                "//table[@id='firing-table']//td[.='DiskFull']/ancestor::tr",
            ))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(
                "#timeline-panel:not([hidden]) #timeline-table tbody tr",
            ))
            .await?;
        // Clicking a top alert whose name holds spaces and quotes searches
        // for exactly that name.
        browser
            .find(Locator::XPath(
                "//table[@id='top-table']//td[.='Disk \"root\" full']/ancestor::tr",
            ))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath(
                "//table[@id='history-table']/tbody[count(tr)=1]/tr/td[.='Disk \"root\" full']",
            ))
            .await?;
        browser.execute("window.scrollTo(0, 0)", vec![]).await?;
        let png = browser.screenshot().await?;
        let path = target_dir().join("dashboard.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    browser.close().await.ok();
    drop(driver);
    result.expect("browser checks");
    service.stop(Duration::from_secs(5)).await;
}
