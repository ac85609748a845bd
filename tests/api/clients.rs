//! The gateway clients of `clients/`, each generated from proto/ by its
//! ecosystem's generator and run against a real server: preload with the
//! admin token, unary and streamed issues, ALREADY_ISSUED on a repeat,
//! ISSUED on a retry under the same request id, the BadRequest detail of an
//! INVALID_ARGUMENT, and GetIssuance (FINALIZED, NOT_FOUND). A client exits
//! non-zero on any difference from what the proto promises. The gRPC-Web
//! client speaks what a browser speaks, over HTTP/1.1 and HTTP/2.

use std::process::Command;
use std::time::Instant;

use crate::helpers::{run_tool, spawn_app, ADMIN_TOKEN};

async fn client_passes(language: &str) {
    let _one = crate::helpers::TOOL_BUILDS.lock().await;
    let app = spawn_app().await;
    let script = format!("{}/clients/{language}/run.sh", env!("CARGO_MANIFEST_DIR"));
    let addr = app.addr.to_string();
    let started = Instant::now();
    let mut client = Command::new("bash");
    client.arg(script).args([addr.as_str(), ADMIN_TOKEN]);
    let out = run_tool(&format!("the {language} client"), client).await;
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

/// The limit on tool scripts holds: a script that hangs is stopped, and so
/// is what it started in the background (as a build's go or npm would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_past_its_limit_is_killed_with_what_it_started() {
    let mark = format!("coupond-hung-tool-{}", crate::helpers::unique_tag());
    let running = |mark: String| async move {
        Command::new("pgrep")
            .args(["-f", &mark])
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut hung = Command::new("bash");
    hung.args(["-c", &format!("(exec -a {mark} sleep 600) & wait")]);
    let started = Instant::now();
    let e = crate::helpers::run_tool_within(hung, std::time::Duration::from_secs(2))
        .await
        .expect_err("a hung script must not pass");
    assert!(e.contains("not done within 2s"), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it waited for the script"
    );
    let gone = crate::helpers::eventually(std::time::Duration::from_secs(10), || {
        let mark = mark.clone();
        async move { !running(mark).await }
    })
    .await;
    assert!(gone, "the background process it started is still running");

    let mut quick = Command::new("bash");
    quick.args(["-c", "echo done"]);
    let out = crate::helpers::run_tool_within(quick, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
}
