//! The HTTP/JSON gateway of `gateway/` (grpc-gateway v2, generated from
//! proto/'s google.api.http annotations by scripts/gateway.sh), run for real
//! in front of a server: `gateway/check.py` preloads, issues to 200 users
//! over both issue routes, checks ALREADY_ISSUED, the 400 + BadRequest of a
//! bad field, 401s, GetIssuance FINALIZED, GetEvent's counts and /healthz;
//! and the generated OpenAPI document passes an independent validator
//! (gateway/validate-openapi.sh, @apidevtools/swagger-parser). In front of
//! a server that requires client certificates, the gateway presents its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{run_tool, spawn_app, ADMIN_TOKEN};

/// The gateway process, killed when the test ends (passing or not).
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// Runs a command to its end (off the async runtime); panics with its
/// output when it fails. Returns its stdout.
async fn run(what: &'static str, command: Command) -> String {
    let started = Instant::now();
    let out = run_tool(what, command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "gateway: {what} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// One `GET /healthz` over a plain socket: the status line's code.
fn healthz(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Installs the pinned plugins, generates and builds (a first `go install`
/// on a new machine downloads modules: minutes, not seconds). Returns the
/// binary's and the OpenAPI document's paths. The caller holds
/// `TOOL_BUILDS`: the build regenerates `gateway/gen/`.
async fn build() -> (String, String) {
    let mut build = Command::new("bash");
    build
        .arg(format!("{}/scripts/gateway.sh", root()))
        .arg("--build");
    let built = run("installed the tools, generated and built", build).await;
    let mut lines = built.lines();
    let (binary, openapi) = (lines.next().unwrap(), lines.next().unwrap());
    (binary.to_owned(), openapi.to_owned())
}

/// Starts the gateway on port 0 with `args` and `envs` (no other
/// `COUPOND_GATEWAY_*` variable reaches it): the process and the address
/// it printed ("listening on http://..."), or what it printed before it
/// ended, with how it ended.
async fn start(
    binary: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<(Gateway, SocketAddr), String> {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("COUPOND_GATEWAY_")) {
        command.env_remove(name);
    }
    let mut child = command
        .args(["-listen", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let stderr = child.stderr.take().unwrap();
    let mut gateway = Gateway(child);
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stderr);
        let mut seen = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            if let Some(addr) = line
                .split("listening on http://")
                .nth(1)
                .and_then(|s| s.split(',').next())
            {
                let addr: SocketAddr = addr.trim().parse().expect("the gateway's address");
                // Keep draining its log so that it never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
                return (Some(addr), seen);
            }
            line.clear();
        }
        (None, seen)
    });
    // A gateway that neither listens nor exits is killed (its Drop), which
    // ends the read.
    let Ok(read) = tokio::time::timeout(Duration::from_secs(60), read).await else {
        return Err("no \"listening on\" line within 60 s".to_owned());
    };
    match read.unwrap() {
        (Some(addr), _) => Ok((gateway, addr)),
        (None, seen) => {
            let status = gateway.0.wait().expect("the gateway's exit status");
            Err(format!("{seen}({status})"))
        }
    }
}

/// Polls `/healthz` (grpc.health.v1 behind it) until it answers `status`
/// or 30 s passed; returns the last answer.
async fn healthz_until(addr: SocketAddr, status: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = tokio::task::spawn_blocking(move || healthz(addr))
            .await
            .unwrap();
        let last = format!("{answer:?}");
        if matches!(&answer, Ok(a) if a.starts_with(&format!("HTTP/1.1 {status}")))
            || Instant::now() >= deadline
        {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// /healthz of a gateway started with `args` and `envs`, once it is `status` (or the
/// last answer after 30 s); the gateway is stopped after.
async fn health_with(binary: &str, args: &[&str], envs: &[(&str, &str)], status: &str) -> String {
    let (gateway, addr) = start(binary, args, envs)
        .await
        .unwrap_or_else(|rest| panic!("the gateway did not start:\n{rest}"));
    let answer = healthz_until(addr, status).await;
    drop(gateway);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_gateway_works_as_the_proto_promises() {
    let _one = crate::helpers::TOOL_BUILDS.lock().await;
    let app = spawn_app().await;
    let started = Instant::now();
    let (binary, openapi) = build().await;
    let build_secs = started.elapsed().as_secs_f64();
    let backend = app.addr.to_string();
    let (gateway, addr) = start(&binary, &["-grpc", &backend], &[])
        .await
        .unwrap_or_else(|rest| panic!("the gateway did not start:\n{rest}"));
    let health = healthz_until(addr, "200").await;
    assert!(health.contains("HTTP/1.1 200"), "/healthz: {health}");

    let mut check = Command::new("python3");
    check.arg(format!("{}/gateway/check.py", root())).args([
        format!("http://{addr}"),
        ADMIN_TOKEN.to_owned(),
        app.event_id("gw"),
    ]);
    let checked = run("check.py ran", check).await;
    eprintln!("{checked}");
    assert!(
        checked.contains("gateway check: OK"),
        "check.py did not say OK:\n{checked}"
    );

    let mut validate = Command::new("bash");
    validate
        .arg(format!("{}/gateway/validate-openapi.sh", root()))
        .arg(&openapi);
    let validated = run("validated the OpenAPI document", validate).await;
    eprintln!("{}", validated.trim());
    assert!(validated.contains("openapi: valid"), "{validated}");
    let mut operations: Vec<&str> = validated
        .lines()
        .filter_map(|l| l.strip_prefix("operation: "))
        .collect();
    operations.sort();
    assert_eq!(
        operations,
        [
            "GET /v1/events",
            "GET /v1/events/{eventId}",
            "GET /v1/events/{eventId}/issuances/{userId}",
            "POST /coupons/issue",
            "POST /coupons/preload",
            "POST /v1/events",
            "POST /v1/events/{eventId}/issuances",
            "POST /v1/events/{eventId}:close",
            "POST /v1/events/{eventId}:extend",
            "POST /v1/events/{eventId}:pause",
            "POST /v1/events/{eventId}:resume",
            "POST /v1/issuances:stream",
        ],
        "every RPC's HTTP binding in the OpenAPI document"
    );
    // A client generated from the document knows to send the bearer token.
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&openapi).unwrap()).unwrap();
    let bearer = &document["securityDefinitions"]["bearer"];
    assert_eq!(
        (&bearer["type"], &bearer["in"], &bearer["name"]),
        (
            &serde_json::json!("apiKey"),
            &serde_json::json!("header"),
            &serde_json::json!("Authorization")
        ),
        "the bearer header in securityDefinitions: {bearer}"
    );
    assert_eq!(
        document["security"],
        serde_json::json!([{ "bearer": [] }]),
        "every operation asks for it"
    );

    eprintln!(
        "gateway: built in {build_secs:.1} s, whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(gateway);
}

/// In front of a coupond that requires client certificates (mTLS), the
/// gateway presents the one it is given; without it, the handshake fails
/// and /healthz says so; a certificate without its key is refused at start
/// with both flags named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_presents_its_client_certificate_to_an_mtls_server() {
    let _one = crate::helpers::TOOL_BUILDS.lock().await;
    let (binary, _) = build().await;
    let tls = crate::tls::MtlsServer::start().await;
    let backend = format!("127.0.0.1:{}", tls.port);
    let ca = tls.ca.display().to_string();
    let (cert, key) = (
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let common = [
        "-grpc",
        &backend,
        "-grpc-ca",
        &ca,
        "-grpc-server-name",
        "localhost",
    ];

    let with_cert = [&common[..], &["-grpc-cert", &cert, "-grpc-key", &key]].concat();
    let answer = health_with(&binary, &with_cert, &[], "200").await;
    assert!(
        answer.contains("HTTP/1.1 200"),
        "with its certificate: {answer}"
    );
    let by_env = [
        ("COUPOND_GATEWAY_GRPC_CERT", cert.as_str()),
        ("COUPOND_GATEWAY_GRPC_KEY", key.as_str()),
    ];
    let answer = health_with(&binary, &common, &by_env, "200").await;
    assert!(
        answer.contains("HTTP/1.1 200"),
        "with its certificate named in the environment: {answer}"
    );
    // The same CA and server name as above, so the handshake fails for the
    // certificate alone. (Its message varies with timing: under TLS 1.3 the
    // server refuses after the client finished, which the client may see
    // as "certificate required" or as a broken pipe.)
    let answer = health_with(&binary, &common, &[], "503").await;
    assert!(
        answer.contains("HTTP/1.1 503"),
        "without a certificate: {answer}"
    );

    // Half a pair, even with nothing else of TLS named, is refused.
    for half in [
        [&common[..], &["-grpc-cert", &cert]].concat(),
        vec!["-grpc", &backend, "-grpc-key", &key],
    ] {
        let refused = start(&binary, &half, &[]).await.map(|(_, addr)| addr);
        assert!(
            matches!(&refused, Err(out) if out.contains("-grpc-cert and -grpc-key go together")
                && out.contains("exit status: 1")),
            "{half:?}: {refused:?}"
        );
    }
    tls.stop();
}
