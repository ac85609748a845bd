//! coupond against a Kafka listener that requires SASL/SCRAM (stack.sh's
//! broker on 127.0.0.1:9094, user `coupond`), configured only through the
//! librdkafka properties an operator passes.

use coupond::config::{KafkaProperty, Settings};
use coupond::startup::Application;

use crate::helpers::{
    check_issued, isolated_settings, preload_request, serve_settings, spawn_with, unique_tag,
};

fn through_scram(s: &mut Settings, password: &str) {
    s.kafka.brokers = "127.0.0.1:9094".into();
    s.kafka.properties = [
        "security.protocol=SASL_PLAINTEXT".to_owned(),
        "sasl.mechanism=SCRAM-SHA-256".to_owned(),
        "sasl.username=coupond".to_owned(),
        format!("sasl.password={password}"),
    ]
    .iter()
    .map(|p| KafkaProperty::parse(p).unwrap())
    .collect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_and_finalizes_through_a_sasl_scram_listener() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    through_scram(&mut settings, "coupond-secret");
    let shown = format!("{settings:?}");
    assert!(
        !shown.contains("coupond-secret"),
        "the password never prints: {shown}"
    );
    assert!(shown.contains("sasl.password=[redacted]"), "{shown}");
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("scram");
    app.preload(preload_request(&event, 100)).await.unwrap();
    let mut responses = Vec::new();
    for i in 0..120 {
        let user = format!("u{i}");
        responses.push((user.clone(), app.issue(&event, &user).await));
    }
    let issued = check_issued(&responses, 100, &[]);
    app.await_finalized(&event, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_fails_at_start_naming_the_cause() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    through_scram(&mut settings, "not-the-password");
    let err = match Application::build(settings, serve_settings()).await {
        Ok(_) => panic!("a server with a wrong Kafka password must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.starts_with("kafka at 127.0.0.1:9094"), "{err}");
    assert!(err.contains("Authentication failed"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}
