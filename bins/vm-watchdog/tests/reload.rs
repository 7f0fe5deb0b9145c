//! `vms.yaml` watching with real file events (real time; the debounce
//! itself is proved under paused time in `watch.rs`), and the reloader's
//! one-alert-per-error rule under paused time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keel_notify::Priority;
use keel_telemetry::Hangups;
use tokio_util::sync::CancellationToken;
use vm_watchdog::watch::{self, Reloader};
use vm_watchdog::{ApiSettings, VmStatus, vms_yaml};

use support::{ScriptedApi, eventually, harness_custom, run_for};

fn yaml(names: &[&str]) -> String {
    let mut text = String::from("vms:\n");
    for n in names {
        text.push_str(&format!("  - name: {n}\n    instance_id: i-{n}\n"));
    }
    text
}

#[tokio::test]
async fn valid_changes_apply_and_invalid_ones_keep_the_running_configuration() {
    let api = ScriptedApi::default();
    for n in ["a", "b", "c", "d"] {
        api.add(&format!("i-{n}"), VmStatus::Running, None);
    }
    let h = harness_custom(api, ApiSettings::new(10), |b| {
        b.debounce(Priority::Warning, Duration::ZERO)
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a", "b"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    let cancel = CancellationToken::new();
    let watcher = watch::spawn(
        Reloader::new(Arc::clone(&h.engine), path.clone(), first),
        Duration::from_millis(100),
        Hangups::new().subscribe(),
        cancel.clone(),
    )
    .unwrap();

    std::fs::write(&path, yaml(&["a", "b", "c"])).unwrap();
    eventually(Duration::from_secs(10), "VM c added", || {
        (h.engine.vm_names() == ["a", "b", "c"]).then_some(())
    })
    .await;

    // An invalid file: kept running as before, one warning with the error.
    std::fs::write(
        &path,
        "vms:\n  - name: a\n    instance_id: i-a\n  - name: a\n    instance_id: i-b\n",
    )
    .unwrap();
    let warning = eventually(Duration::from_secs(10), "the warning", || {
        h.inbox.titled("vms.yaml is invalid").into_iter().next()
    })
    .await;
    assert_eq!(warning.priority, Priority::Warning);
    assert_eq!(h.engine.vm_names(), ["a", "b", "c"]);
    // Saving the same broken file again does not alert again.
    std::fs::write(
        &path,
        "vms:\n  - name: a\n    instance_id: i-a\n  - name: a\n    instance_id: i-b\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.inbox.titled("vms.yaml is invalid").len(), 1);

    // Replaced by rename, as editors do.
    let tmp = dir.path().join(".vms.yaml.tmp");
    std::fs::write(&tmp, yaml(&["d"])).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually(Duration::from_secs(10), "only d left", || {
        (h.engine.vm_names() == ["d"] && h.engine.live_tasks() == 1).then_some(())
    })
    .await;

    cancel.cancel();
    watcher.await.unwrap();
    assert!(h.engine.shutdown(Duration::from_secs(1)).await);
    assert_eq!(h.engine.live_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_file_alerts_once_per_error_however_long_it_stays_broken() {
    let api = ScriptedApi::default();
    for n in ["a", "b"] {
        api.add(&format!("i-{n}"), VmStatus::Running, None);
    }
    let h = harness_custom(api, ApiSettings::new(10), |b| {
        b.debounce(Priority::Warning, Duration::ZERO)
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    let mut reloader = Reloader::new(Arc::clone(&h.engine), path.clone(), first);
    let alerts = || h.inbox.titled("vms.yaml is invalid").len();
    let duplicate = "vms:\n  - name: a\n    instance_id: i-a\n  - name: a\n    instance_id: i-b\n";

    std::fs::write(&path, duplicate).unwrap();
    assert!(!reloader.reload().await);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(alerts(), 1);
    // Saved again and again, well past the 5 min dedup window: the same
    // error, no new alert; the running configuration stays.
    for _ in 0..3 {
        run_for(Duration::from_secs(400)).await;
        std::fs::write(&path, duplicate).unwrap();
        assert!(!reloader.reload().await);
    }
    run_for(Duration::from_secs(1)).await;
    assert_eq!(alerts(), 1, "{:?}", h.inbox.all());
    assert_eq!(h.engine.vm_names(), ["a"]);

    // Another error is news.
    std::fs::write(&path, "vms:\n  - name: b\n").unwrap();
    assert!(!reloader.reload().await);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(alerts(), 2);

    // Fixed: the episode ends with "valid again" (after the 10 s info
    // debounce), once.
    std::fs::write(&path, yaml(&["a", "b"])).unwrap();
    assert!(reloader.reload().await);
    assert_eq!(h.engine.vm_names(), ["a", "b"]);
    run_for(Duration::from_secs(11)).await;
    assert_eq!(h.inbox.titled("vms.yaml is valid again").len(), 1);
    // Broken again the first way right away: a new episode, alerted again
    // although the dedup window of the first alert has not passed.
    std::fs::write(&path, duplicate).unwrap();
    assert!(!reloader.reload().await);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(alerts(), 3);
    let titles: Vec<String> = h.inbox.all().into_iter().map(|g| g.title).collect();
    assert_eq!(
        titles.last().map(String::as_str),
        Some("vms.yaml is invalid; keeping the running configuration"),
        "{titles:?}"
    );
    assert!(h.engine.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_file_fixed_within_the_warning_debounce_alerts_nothing() {
    let api = ScriptedApi::default();
    api.add("i-a", VmStatus::Running, None);
    // The default 30 s warning debounce.
    let h = harness_custom(api, ApiSettings::new(10), |b| b);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    let mut reloader = Reloader::new(Arc::clone(&h.engine), path.clone(), first);
    std::fs::write(&path, "vms: [").unwrap();
    assert!(!reloader.reload().await);
    run_for(Duration::from_secs(5)).await;
    std::fs::write(&path, yaml(&["a"])).unwrap();
    assert!(!reloader.reload().await, "unchanged once valid");
    run_for(Duration::from_secs(120)).await;
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    assert!(h.engine.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn sighup_reloads_vms_yaml() {
    let api = ScriptedApi::default();
    for n in ["a", "b"] {
        api.add(&format!("i-{n}"), VmStatus::Running, None);
    }
    let h = harness_custom(api, ApiSettings::new(10), |b| b);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    // Changed before the watcher starts: no file event will tell it.
    std::fs::write(&path, yaml(&["a", "b"])).unwrap();
    let cancel = CancellationToken::new();
    let hangups = Hangups::new();
    let watcher = watch::spawn(
        Reloader::new(Arc::clone(&h.engine), path.clone(), first),
        Duration::from_millis(100),
        hangups.subscribe(),
        cancel.clone(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.engine.vm_names(), ["a"], "nothing reloads on its own");
    // What the kit does on a real SIGHUP (keel-telemetry's tests send one).
    assert!(hangups.trigger(), "the watcher subscribed");
    eventually(Duration::from_secs(10), "VM b added", || {
        (h.engine.vm_names() == ["a", "b"]).then_some(())
    })
    .await;
    cancel.cancel();
    watcher.await.unwrap();
    assert!(h.engine.shutdown(Duration::from_secs(1)).await);
}

/// A log file next to `vms.yaml` (written on every reload at
/// `RUST_LOG=trace`) must not trigger reloads: only events naming
/// `vms.yaml` count, so the watcher never feeds on its own log.
#[tokio::test]
async fn writes_to_other_files_in_the_directory_do_not_reload() {
    let api = ScriptedApi::default();
    for n in ["a", "b"] {
        api.add(&format!("i-{n}"), VmStatus::Running, None);
    }
    let h = harness_custom(api, ApiSettings::new(10), |b| b);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    // Changed before the watcher starts: only a reload would apply it.
    std::fs::write(&path, yaml(&["a", "b"])).unwrap();
    let cancel = CancellationToken::new();
    let watcher = watch::spawn(
        Reloader::new(Arc::clone(&h.engine), path.clone(), first),
        Duration::from_millis(50),
        Hangups::new().subscribe(),
        cancel.clone(),
    )
    .unwrap();
    let log = dir.path().join("vm-watchdog.log");
    for i in 0..50 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.engine.vm_names(), ["a"], "the log's writes reloaded");
    cancel.cancel();
    watcher.await.unwrap();
    assert!(h.engine.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn per_vm_overrides_reload_and_a_bad_one_keeps_the_running_configuration() {
    let api = ScriptedApi::default();
    api.add("i-a", VmStatus::Running, None);
    let h = harness_custom(api.clone(), ApiSettings::new(10), |b| {
        b.debounce(Priority::Warning, Duration::ZERO)
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    std::fs::write(&path, yaml(&["a"])).unwrap();
    let first = vms_yaml::load(&path).await.unwrap();
    h.engine.apply(&first);
    let mut reloader = Reloader::new(Arc::clone(&h.engine), path.clone(), first);
    run_for(Duration::from_secs(10)).await;
    assert_eq!(h.engine.vm_view("a").unwrap()["auto_start"], true);

    // Alert only from now on; same task (its state is kept).
    std::fs::write(
        &path,
        "vms:\n  - name: a\n    instance_id: i-a\n    auto_start: false\n    topic_id: 5\n",
    )
    .unwrap();
    assert!(reloader.reload().await);
    let view = h.engine.vm_view("a").unwrap();
    assert_eq!(
        (view["auto_start"].clone(), view["topic_id"].clone()),
        (false.into(), 5.into())
    );
    assert_eq!(h.engine.live_tasks(), 1);
    api.set_status("i-a", VmStatus::Stopped);
    run_for(Duration::from_secs(90)).await;
    assert_eq!(h.inbox.titled("VM a is STOPPED").len(), 1);
    assert!(api.calls_to("start", "i-a").is_empty(), "alert only");

    // A bad override: the running configuration stays, one warning.
    std::fs::write(
        &path,
        "vms:\n  - name: a\n    instance_id: i-a\n    stuck_after: -5m\n",
    )
    .unwrap();
    assert!(!reloader.reload().await);
    run_for(Duration::from_secs(1)).await;
    let warning = h.inbox.titled("vms.yaml is invalid");
    assert_eq!(warning.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(h.engine.vm_view("a").unwrap()["auto_start"], false);
}
