//! The ghz configurations in `ghz/` stay in step with the proto: each names
//! an existing method, and every field (and enum value) in its `data` exists
//! in that method's request message; and each runs, with ghz itself, against
//! a server.

use prost::Message;
use prost_types::{
    field_descriptor_proto::Type, DescriptorProto, EnumDescriptorProto, FileDescriptorProto,
    FileDescriptorSet,
};
use serde_json::Value;
use std::process::Command;

use crate::helpers::{spawn_app, TestApp, ADMIN_TOKEN};

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(coupond::proto::FILE_DESCRIPTOR_SET).unwrap()
}

/// The type `full_name` (`.package.Name`) among what `of` lists per file.
fn find<'a, T>(
    set: &'a FileDescriptorSet,
    full_name: &str,
    of: impl Fn(&'a FileDescriptorProto) -> Vec<(&'a str, &'a T)>,
) -> &'a T {
    let name = full_name.trim_start_matches('.');
    set.file
        .iter()
        .flat_map(|f| {
            of(f)
                .into_iter()
                .map(move |(n, t)| (format!("{}.{n}", f.package()), t))
        })
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no type {name}"))
        .1
}

fn message<'a>(set: &'a FileDescriptorSet, full_name: &str) -> &'a DescriptorProto {
    find(set, full_name, |f| {
        f.message_type.iter().map(|m| (m.name(), m)).collect()
    })
}

fn enum_values(set: &FileDescriptorSet, full_name: &str) -> Vec<String> {
    let e: &EnumDescriptorProto = find(set, full_name, |f| {
        f.enum_type.iter().map(|e| (e.name(), e)).collect()
    });
    e.value.iter().map(|v| v.name().to_owned()).collect()
}

/// Checks `data` against `msg`, naming the config and path on a mismatch.
fn check(set: &FileDescriptorSet, msg: &DescriptorProto, data: &Value, at: &str) {
    let obj = data
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"));
    for (key, value) in obj {
        let field = msg
            .field
            .iter()
            .find(|f| f.name() == key || f.json_name() == key)
            .unwrap_or_else(|| panic!("{at}.{key}: no such field in {}", msg.name()));
        let items: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for item in items {
            match field.r#type() {
                Type::Message if field.type_name() == ".google.protobuf.Timestamp" => {
                    let s = item
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}.{key}: not a string"));
                    chrono::DateTime::parse_from_rfc3339(s)
                        .unwrap_or_else(|e| panic!("{at}.{key}: {e}"));
                }
                Type::Message => check(
                    set,
                    message(set, field.type_name()),
                    item,
                    &format!("{at}.{key}"),
                ),
                Type::Enum => {
                    let name = item
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}.{key}: not a name"));
                    assert!(
                        enum_values(set, field.type_name())
                            .iter()
                            .any(|v| v == name),
                        "{at}.{key}: {name} is not a value of {}",
                        field.type_name()
                    );
                }
                Type::String => assert!(item.is_string(), "{at}.{key}: not a string"),
                _ => assert!(item.is_number(), "{at}.{key}: not a number"),
            }
        }
    }
}

#[test]
fn ghz_configurations_match_the_proto() {
    let set = descriptors();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ghz");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let call = config["call"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no call"));
        let (service, method) = call.rsplit_once('.').unwrap();
        let (package, service) = service.rsplit_once('.').unwrap();
        let input = set
            .file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter())
            .find(|m| m.name() == method)
            .unwrap_or_else(|| panic!("{name}: no method {call}"))
            .input_type()
            .to_owned();
        check(&set, message(&set, &input), &config["data"], &name);
        checked.push(name);
    }
    checked.sort();
    assert_eq!(
        checked,
        ["issue.json", "issue_stream.json", "preload.json"],
        "every configuration the ghz README names was checked"
    );
}

/// Runs `ghz/<name>` against `app` with `changes` applied to its JSON (the
/// event id, smaller counts, the server's address) and returns ghz's JSON
/// report; `bin` is ghz, a pinned `go install` (scripts/ghz.sh).
fn run_ghz(bin: &str, app: &TestApp, name: &str, changes: Value) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ghz").join(name)).unwrap())
            .unwrap();
    merge(&mut config, changes);
    config["host"] = Value::String(app.addr.to_string());
    config["metadata"] = serde_json::json!({ "authorization": format!("Bearer {ADMIN_TOKEN}") });
    let path = std::env::temp_dir().join(format!("ghz-{}-{name}", app.tag));
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(bin)
        .args(["--config", path.to_str().unwrap(), "--format", "json"])
        .output()
        .expect("run ghz");
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: ghz printed no report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn merge(into: &mut Value, changes: Value) {
    match (into, changes) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// ghz's count of calls that ended with `code`, and of errors.
fn calls(report: &Value, code: &str) -> (u64, u64) {
    let n = report["statusCodeDistribution"][code].as_u64().unwrap_or(0);
    let errors = report["errorDistribution"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
    (n, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ghz_configuration_runs_against_a_server() {
    let ghz = crate::helpers::installed("ghz.sh").await;
    let app = spawn_app().await;
    let event = app.event_id("ghz");
    let preload = run_ghz(
        &ghz,
        &app,
        "preload.json",
        serde_json::json!({ "data": { "event_id": event, "total_count": 2000 } }),
    );
    assert_eq!(calls(&preload, "OK"), (1, 0), "preload: {preload}");

    let unary = run_ghz(
        &ghz,
        &app,
        "issue.json",
        serde_json::json!({ "total": 300, "concurrency": 10, "connections": 2,
                            "data": { "event_id": event } }),
    );
    assert_eq!(calls(&unary, "OK"), (300, 0), "issue: {unary}");
    let stream = run_ghz(
        &ghz,
        &app,
        "issue_stream.json",
        serde_json::json!({ "total": 4, "concurrency": 2, "connections": 1,
                            "stream-call-count": 100, "data": { "event_id": event } }),
    );
    assert_eq!(calls(&stream, "OK"), (4, 0), "issue stream: {stream}");

    // Every unary call and every streamed message issued a distinct user.
    let ev = app.get_event(&event).await;
    assert_eq!(ev.issued_count, 300 + 4 * 100);
    assert_eq!(ev.remaining_count, 2000 - 700);
}
