//! The bundled `cache` plugin on real trees under a read-only grant: totals, failures that do
//! not stop the job, sha256 verification, path mapping and refusal, progress cadence.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use taskhost::runtime::Grants;

use crate::harness::{TestServer, assert_error, read_only_grants};

/// Writes `size` deterministic pseudo-random bytes and returns them.
pub fn write_file(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, &data).expect("write test file");
    data
}

fn cache_grants(root: &Path, config: &[(&str, &str)]) -> Grants {
    read_only_grants(root, "/cache", config)
}

const PREFIXES: &str = "/Volumes/dmpfs/tc-east-1;C:\\dmpfs\\tc-east-1;/mnt/lucidlink/tc-east-1";

async fn warm(server: &TestServer, input: Value) -> Value {
    let api = server.api();
    let task = api
        .create(json!({"plugin": "cache", "type": "warm", "input": input}))
        .await;
    let id = task["id"].as_str().expect("task id").to_owned();
    let done = api.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    done
}

fn progress_reports(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "progress")
        .map(|e| &e["data"])
        .collect()
}

#[tokio::test]
async fn warming_a_nested_tree_reads_every_file_and_reports_the_ones_that_fail_without_stopping() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("outside.mov");
    write_file(&secret, 4096, 99);
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let media = root.join("00_Media");
    let dir = media.join("Farm/ProRes422");
    let mut sizes = BTreeMap::new();
    for (i, (name, size)) in [
        ("Farm00101.mov", 300 * 1024),
        ("Farm00102.mov", (1 << 20) + 7),
        ("Farm00103.mov", 0),
        ("sub/deeper/clip.mxf", 200 * 1024),
        ("sub/notes.txt", 123),
    ]
    .into_iter()
    .enumerate()
    {
        write_file(&dir.join(name), size, i as u64);
        sizes.insert(format!("00_Media/Farm/ProRes422/{name}"), size as u64);
    }
    let first = std::fs::read(dir.join("Farm00101.mov")).unwrap();
    write_file(&media.join("single.mov"), 50 * 1024, 42);
    // A link out of the grant: the sandbox refuses to follow it.
    std::os::unix::fs::symlink(&secret, media.join("escape.mov")).unwrap();
    std::fs::write(
        media.join("SHA256SUMS"),
        format!(
            "{}  Farm/ProRes422/Farm00101.mov\n{}  single.mov\n",
            hex::encode(Sha256::digest(&first)),
            "0".repeat(64)
        ),
    )
    .unwrap();

    let server = TestServer::builder()
        .plugin_grants("cache", cache_grants(root, &[("path_prefixes", PREFIXES)]))
        .start()
        .await;
    let done = warm(
        &server,
        json!({
            "files": [
                "/Volumes/dmpfs/tc-east-1/00_Media/single.mov",
                "00_Media/missing.mov",
                "00_Media/escape.mov",
                "00_Media/Farm",
            ],
            "directories": ["C:\\dmpfs\\tc-east-1\\00_Media\\Farm\\ProRes422"],
            "verify": {"manifest": "00_Media/SHA256SUMS"},
            "file_records": "all",
        }),
    )
    .await;
    let result = &done["result"];
    let dir_bytes: u64 = sizes.values().sum();
    assert_eq!(result["totalFiles"], 9, "{result}");
    assert_eq!(result["completedFiles"], 5, "{result}");
    assert_eq!(result["failedFiles"], 4, "{result}");
    assert_eq!(result["completedSize"]["bytes"], dir_bytes, "{result}");
    assert_eq!(
        result["totalSize"]["bytes"],
        dir_bytes + 50 * 1024,
        "{result}"
    );
    assert_eq!(result["totalSize"]["readable"], "1.54 MB", "{result}");
    assert_eq!(
        result["verification"],
        json!({"verified": 1, "mismatched": 1, "unlisted": 4}),
        "{result}"
    );
    assert!(
        result["throughput"]["mbps"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    assert!(
        result["throughput"]["readable"]
            .as_str()
            .unwrap()
            .ends_with(" MB/s")
    );

    let failures: BTreeMap<&str, &str> = result["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["error"].as_str().unwrap()))
        .collect();
    assert_eq!(failures["00_Media/missing.mov"], "not found");
    assert!(failures["00_Media/Farm"].starts_with("is a directory"));
    assert!(failures["00_Media/single.mov"].starts_with("sha256 mismatch"));
    assert!(failures.contains_key("00_Media/escape.mov"), "{result}");

    let records = server
        .api()
        .records(done["id"].as_str().unwrap(), "files")
        .await;
    assert_eq!(records.len(), 9);
    let by_path: BTreeMap<&str, &Value> = records
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), &r["data"]))
        .collect();
    for (path, size) in &sizes {
        let record = by_path[path.as_str()];
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["bytes"], *size, "{record}");
    }
    let first_record = by_path["00_Media/Farm/ProRes422/Farm00101.mov"];
    assert_eq!(first_record["sha256"], hex::encode(Sha256::digest(&first)));
    assert_eq!(by_path["00_Media/escape.mov"]["status"], "failed");

    // Every byte of the regular files was read, none of the file outside the grant.
    let events = server.api().events(done["id"].as_str().unwrap()).await;
    let last = progress_reports(&events).pop().expect("progress").clone();
    let metrics = &last["metrics"];
    assert_eq!(
        metrics["bytes_done"],
        (dir_bytes + 50 * 1024) as f64,
        "{last}"
    );
    assert_eq!(metrics["files_failed"], 4.0, "{last}");
    assert_eq!(last["processed"], 9, "{last}");
    assert_eq!(last["total"], 9, "{last}");
}

#[tokio::test]
async fn paths_that_leave_the_cache_root_are_refused_with_400_and_create_nothing() {
    let cache = tempfile::tempdir().unwrap();
    write_file(&cache.path().join("a.mov"), 10, 1);
    let server = TestServer::builder()
        .plugin_grants(
            "cache",
            cache_grants(cache.path(), &[("path_prefixes", PREFIXES)]),
        )
        .start()
        .await;
    let api = server.api();
    for (input, reason) in [
        (json!({"files": ["../etc/passwd"]}), "contains '..'"),
        (
            json!({"files": ["00_Media/../../etc/passwd"]}),
            "contains '..'",
        ),
        (json!({"directories": ["..\\..\\Windows"]}), "contains '..'"),
        (
            json!({"files": ["/etc/passwd"]}),
            "none of the configured prefixes",
        ),
        (
            json!({"files": ["D:\\other-share\\a.mov"]}),
            "none of the configured prefixes",
        ),
        (
            json!({"files": ["/Volumes/dmpfs/tc-east-1/../secrets"]}),
            "contains '..'",
        ),
        (json!({"files": []}), "at least one path"),
        (
            json!({"files": ["a.mov"], "verify": {"manifest": "../SHA256SUMS"}}),
            "contains '..'",
        ),
        (json!({"files": ["a.mov"], "unknown": true}), "unknown"),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/tasks",
                json!({"plugin": "cache", "type": "warm", "input": input}),
            )
            .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{input}: {body}");
    }
    let (_, tasks) = api.get("/api/v1/tasks").await;
    assert_eq!(tasks["meta"]["total"], 0, "{tasks}");

    // The same job under a mapped prefix, and a plain relative path, are accepted.
    let done = warm(
        &server,
        json!({"files": ["/mnt/lucidlink/tc-east-1/a.mov", "./a.mov"]}),
    )
    .await;
    assert_eq!(done["result"]["totalFiles"], 1, "{done}");
    assert_eq!(done["result"]["completedFiles"], 1, "{done}");
}

#[tokio::test]
async fn progress_arrives_every_n_files_and_every_t_milliseconds() {
    let cache = tempfile::tempdir().unwrap();
    for i in 0..23 {
        write_file(
            &cache.path().join(format!("many/f{i:02}.bin")),
            1000 + i,
            i as u64,
        );
    }
    write_file(&cache.path().join("big/one.bin"), 48 << 20, 7);
    let server = TestServer::builder()
        .plugin_grants(
            "cache",
            // One file at a time, so that every file finishes on its own and the counts are exact.
            cache_grants(cache.path(), &[("parallel_files", "1")]),
        )
        .start()
        .await;

    let done = warm(
        &server,
        json!({"directories": ["many"], "progress": {"every_files": 5, "every_ms": 600000}}),
    )
    .await;
    let events = server.api().events(done["id"].as_str().unwrap()).await;
    let processed: Vec<(String, u64)> = progress_reports(&events)
        .iter()
        .filter(|p| p["current_step"] != "Scanning")
        .map(|p| {
            (
                p["current_step"].as_str().unwrap().to_owned(),
                p["processed"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [0, 5, 10, 15, 20]
        .into_iter()
        .map(|n| ("Reading".to_owned(), n))
        .chain([("Done".to_owned(), 23)])
        .collect();
    assert_eq!(processed, expected);

    // One large file and a 1 ms cadence: reports come while the file is still being read.
    let done = warm(
        &server,
        json!({"files": ["big/one.bin"], "progress": {"every_files": 1000, "every_ms": 1}}),
    )
    .await;
    let events = server.api().events(done["id"].as_str().unwrap()).await;
    let during: Vec<f64> = progress_reports(&events)
        .iter()
        .filter(|p| p["current_step"] == "Reading" && p["processed"] == 0)
        .map(|p| p["metrics"]["bytes_done"].as_f64().unwrap())
        .collect();
    assert!(
        during.len() >= 3,
        "expected timed reports mid-file: {during:?}"
    );
    assert!(
        during.windows(2).all(|w| w[0] <= w[1]),
        "bytes done never decrease: {during:?}"
    );
    assert!(
        during.iter().any(|b| *b > 0.0 && *b < (48 << 20) as f64),
        "some report falls mid-file: {during:?}"
    );
}

#[tokio::test]
async fn a_job_fails_clearly_when_the_operator_granted_no_cache_directory() {
    let server = TestServer::builder().start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "cache", "type": "warm", "input": {"files": ["a.mov"]}}))
        .await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "CACHE_ROOT_NOT_GRANTED", "{done}");
}
