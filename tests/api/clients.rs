//! The gateway clients of `clients/`, each generated from proto/ by its
//! ecosystem's generator and run against a real server: preload with the
//! admin token, unary and streamed issues, ALREADY_ISSUED on a repeat,
//! ISSUED on a retry under the same request id, the BadRequest detail of an
//! INVALID_ARGUMENT, and GetIssuance (FINALIZED, NOT_FOUND). A client exits
//! non-zero on any difference from what the proto promises. The gRPC-Web
//! client speaks what a browser speaks, over HTTP/1.1 and HTTP/2.

use std::process::Command;
use std::time::Instant;

use crate::helpers::{spawn_app, ADMIN_TOKEN};

async fn client_passes(language: &str) {
    let _one = crate::helpers::TOOL_BUILDS.lock().await;
    let app = spawn_app().await;
    let script = format!("{}/clients/{language}/run.sh", env!("CARGO_MANIFEST_DIR"));
    let addr = app.addr.to_string();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .args([addr.as_str(), ADMIN_TOKEN])
            .output()
            .expect("run the client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{language} client: generated, built and ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() && stdout.contains(": OK"),
        "{language} client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_client_works_as_the_proto_promises() {
    client_passes("go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_works_as_the_proto_promises() {
    client_passes("java").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_works_as_the_proto_promises() {
    client_passes("typescript").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_as_the_proto_promises() {
    client_passes("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_web_client_works_as_the_proto_promises() {
    client_passes("grpc-web").await;
}
