//! The ghz configurations in `ghz/` stay in step with the proto: each names
//! an existing method, and every field (and enum value) in its `data` exists
//! in that method's request message. ghz itself is not packaged for Debian,
//! so this is what keeps a proto change from silently breaking them.

use prost::Message;
use prost_types::{
    field_descriptor_proto::Type, DescriptorProto, EnumDescriptorProto, FileDescriptorProto,
    FileDescriptorSet,
};
use serde_json::Value;

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
