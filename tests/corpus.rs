//! Bad input, case by case, through the whole worker: every record of `tests/corpus/cases.json`
//! must end in the dead-letter topic with its reason, or in a `failed` or `skipped` outcome. The
//! worker must stay up, and every filter it sends must carry the user name as one escaped
//! literal.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::Deserialize;
use serde_json::Value;

use netskope_sim::SimArgs;
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

#[derive(Debug, Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    topic: String,
    key: Option<String>,
    payload: Option<String>,
    payload_hex: Option<String>,
    fill: Option<String>,
    fill_times: Option<usize>,
    expect: String,
    reason: String,
    why: String,
}

impl Case {
    fn bytes(&self) -> Option<Vec<u8>> {
        if let Some(hex) = &self.payload_hex {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            return Some(bytes);
        }
        let payload = self.payload.as_ref()?;
        let fill = match (&self.fill, self.fill_times) {
            (Some(f), Some(n)) => f.repeat(n),
            _ => String::new(),
        };
        Some(payload.replace("{FILL}", &fill).into_bytes())
    }

    fn event_id(&self) -> String {
        format!("c-{}", self.name)
    }
}

fn corpus() -> Vec<Case> {
    let corpus: Corpus =
        serde_json::from_str(include_str!("corpus/cases.json")).expect("cases.json parses");
    corpus.cases
}

/// The literal of a `userName eq "<literal>"` filter, unescaped; `None` if the filter has any
/// other shape (an unescaped quote would end the literal early and leave text behind it).
fn filter_literal(filter: &str) -> Option<String> {
    let body = filter.strip_prefix("userName eq \"")?;
    let mut literal = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(literal),
            c => literal.push(c),
        }
    }
    None
}

#[test]
fn filter_literal_refuses_an_injection() {
    assert_eq!(
        filter_literal(r#"userName eq "a\"b""#),
        Some("a\"b".to_string())
    );
    assert_eq!(filter_literal(r#"userName eq "x" or userName pr """#), None);
    assert_eq!(filter_literal(r#"userName eq "open"#), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_ends_in_a_dead_letter_or_a_failed_or_skipped_outcome() {
    let cases = corpus();
    let sandbox = Sandbox::start(
        SimArgs {
            users: 3,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    sandbox.sim.record_timings(10_000);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", sandbox.bootstrap_servers())
        .set("message.max.bytes", "1000000")
        .create()
        .expect("producer");
    for case in &cases {
        let topic = match case.topic.as_str() {
            "terminations" => &sandbox.topics.terminations,
            _ => &sandbox.topics.risk_signals,
        };
        let bytes = case.bytes();
        let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(key) = &case.key {
            record = record.key(key.as_bytes());
        }
        if let Some(b) = &bytes {
            record = record.payload(b);
        }
        producer
            .send(record, Duration::from_secs(5))
            .await
            .unwrap_or_else(|(e, _)| panic!("publish {}: {e}", case.name));
    }

    let mut config = sandbox.config("corpus");
    config.verify.mode = VerifyMode::Off;
    config.netskope.requests_per_minute = 600_000;
    // Most of the corpus is invalid on purpose; the dead-letter limit has its own test.
    config.pipeline.dead_letter_max_ratio = 1.0;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).expect("client"))
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());

    let to_dead_letter = cases.iter().filter(|c| c.expect == "dead_letter").count();
    let to_outcome = cases.len() - to_dead_letter;
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, Duration::from_secs(60), |r| {
            r.len() >= to_dead_letter
        })
        .await
        .expect("dead letters");
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= to_outcome
        })
        .await
        .expect("outcomes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!worker.is_finished(), "the worker stays up");
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");

    let outcomes: BTreeMap<String, Value> = outcomes
        .iter()
        .map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).expect("outcome JSON"))
        .map(|o| {
            (
                o["source_event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o,
            )
        })
        .collect();
    let dead_by_key = |key: &str| -> Option<&OwnedMessage> {
        dead.iter().find(|m| m.key() == Some(key.as_bytes()))
    };
    let mut report = Vec::new();
    for case in &cases {
        let got = if case.expect == "dead_letter" {
            let key = case.key.as_deref().expect("dead-letter cases have a key");
            let d = dead_by_key(key)
                .unwrap_or_else(|| panic!("{}: no dead letter ({})", case.name, case.why));
            assert_eq!(
                d.payload().unwrap_or_default(),
                case.bytes().unwrap_or_default().as_slice(),
                "{}: the original bytes (no value and an empty one both read as empty)",
                case.name
            );
            sandbox::header(d, "offboarder-reason").unwrap_or_default()
        } else {
            let o = outcomes
                .get(&case.event_id())
                .unwrap_or_else(|| panic!("{}: no outcome ({})", case.name, case.why));
            assert_eq!(o["status"], case.expect.as_str(), "{}: {o}", case.name);
            let text = format!("{} {}", o["reason"], o["error"]);
            assert!(
                text.contains(&case.reason),
                "{}: {text} does not say {}",
                case.name,
                case.reason
            );
            case.reason.clone()
        };
        if case.expect == "dead_letter" {
            assert_eq!(got, case.reason, "{}: dead-letter reason", case.name);
        }
        report.push(format!("{:<28} -> {:<12} {}", case.name, case.expect, got));
    }
    println!("{}", report.join("\n"));
    assert_eq!(dead.len(), to_dead_letter, "no other dead letters");
    assert_eq!(outcomes.len(), to_outcome, "no other outcomes");
    assert_eq!(summary.left_open, 0);

    // What the tenant saw: lookups only, each filter one escaped literal equal to a name from
    // the corpus, and nothing that changes anything.
    let names: Vec<String> = cases
        .iter()
        .filter(|c| c.expect != "dead_letter")
        .filter_map(|c| {
            let event: Value = serde_json::from_slice(&c.bytes()?).ok()?;
            Some(event["user"]["user_name"].as_str()?.to_string())
        })
        .collect();
    let timings = sandbox.sim.timings();
    assert!(!timings.is_empty());
    for t in &timings {
        assert_eq!(
            t.method, "GET",
            "nothing but lookups: {} {}",
            t.method, t.target
        );
        let query = t.target.split_once('?').map_or("", |(_, q)| q);
        let filter = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "filter")
            .map(|(_, v)| v.into_owned());
        let Some(filter) = filter else { continue };
        let literal = filter_literal(&filter)
            .unwrap_or_else(|| panic!("a filter that is not one escaped literal: {filter}"));
        assert!(
            names.contains(&literal),
            "a filter for a name the corpus does not hold: {literal:?}"
        );
    }
}
