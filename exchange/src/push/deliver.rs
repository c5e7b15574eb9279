//! The deliverer: sends the outbox to each rule's webhook.
//!
//! Each attempt is a signed `POST` (Standard Webhooks: `webhook-id` is the
//! event id and stays the same on every retry; `webhook-timestamp` and the
//! signature are those of the attempt) through the guarded target client
//! ([`crate::webhook::target_client`]). A `2xx` answer delivers the event;
//! anything else, or no answer within the timeout, schedules a retry after
//! the next delay of the retry schedule, with jitter, until the schedule is
//! spent and the delivery is dead-lettered (it can be put back by hand).
//!
//! Each rule has at most [`PER_RULE`] attempts in flight, and its due
//! deliveries are fetched apart from other rules', so a slow or failing
//! receiver only ever holds up its own events. Outcomes are recorded in
//! batches: first the audit record of what was delivered (the subjects, by
//! keyed hash, for the data tracker), then the delivery states, so a crash
//! in between resends (at least once, deduplicable by `webhook-id`) and
//! never loses a delivery.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::store::{Attempt, Due};
use crate::state::AppState;
use crate::webhook::Secret;

/// Attempts one rule may have in flight.
pub const PER_RULE: usize = 32;

/// Outcomes recorded per transaction at most.
const RECORD_BATCH: usize = 2048;

/// Where one rule's events go.
#[derive(Clone)]
struct Target {
    url: reqwest::Url,
    secret: Option<Secret>,
}

/// An attempt's outcome on its way to the recorder.
struct Outcome {
    rule: String,
    subject: String,
    attempt: Attempt,
}

/// Attempts in flight, by rule.
type InFlight = Arc<Mutex<HashMap<String, HashSet<i64>>>>;

fn in_flight(map: &InFlight) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<i64>>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// The delay before retry `n` (1-based) under `schedule`, with ±15 % jitter,
/// or `None` once the schedule is spent.
pub fn retry_delay(schedule: &[u64], n: usize) -> Option<Duration> {
    let base = *schedule.get(n.checked_sub(1)?)?;
    let factor = rand::random_range(0.85..=1.15);
    Some(Duration::from_secs_f64(base as f64 * factor))
}

/// Runs the deliverer until the process ends.
pub async fn deliverer(state: AppState) {
    let timeout = Duration::from_secs(state.config.webhook_timeout_secs.max(1));
    let client = match crate::webhook::target_client(state.config.webhook_allow_private, timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the webhook client cannot be built; pushes are not delivered");
            return;
        }
    };
    let flight: InFlight = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    // Attempts and the recorder live in this set: when the deliverer stops
    // (the server stops), they stop with it.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(recorder(state.clone(), rx, flight.clone()));
    let mut targets: HashMap<String, Option<Target>> = HashMap::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let now = Utc::now();
        let rules = match state.push.store.rules(None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "push rules cannot be read; deliveries wait");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let mut waiting = false;
        let mut wanted = Vec::new();
        for (rule, _, sealed) in &rules {
            let Some(url) = &rule.def.webhook_url else { continue };
            let target = targets.entry(rule.id.clone()).or_insert_with(|| {
                let url = reqwest::Url::parse(url).ok()?;
                let secret = sealed
                    .as_deref()
                    .and_then(|s| super::unseal(state.secret.key(), &rule.id, s))
                    .and_then(|s| Secret::parse(&s).ok());
                Some(Target { url, secret })
            });
            if target.is_none() {
                continue;
            }
            let busy = in_flight(&flight).get(&rule.id).cloned().unwrap_or_default();
            if busy.len() >= PER_RULE {
                waiting = true;
                continue;
            }
            wanted.push((rule.id.clone(), PER_RULE - busy.len(), busy));
        }
        // Every rule's due deliveries in one read: the loop runs after each
        // batch of outcomes, and a read per rule made it wait on each.
        let due = match state.push.store.due_per_rule(wanted, now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "due deliveries cannot be read");
                Vec::new()
            }
        };
        for (rule, due) in due {
            let Some(Some(target)) = targets.get(&rule) else { continue };
            for d in due {
                in_flight(&flight).entry(rule.clone()).or_default().insert(d.seq);
                let (client, target, tx, rule) = (client.clone(), target.clone(), tx.clone(), rule.clone());
                let schedule = state.config.webhook_retry_secs.clone();
                tasks.spawn(async move {
                    let subject = d.subject.clone();
                    let attempt = attempt(&client, &target, d, &schedule).await;
                    let _ = tx.send(Outcome { rule, subject, attempt });
                });
            }
        }
        // Deliveries of deleted rules need no target any more.
        targets.retain(|id, _| rules.iter().any(|(r, _, _)| &r.id == id));
        let next: Option<DateTime<Utc>> = state.push.store.next_due().await.unwrap_or_default();
        let sleep = match next {
            // Due now but in flight (or held by the per-rule limit): an outcome wakes the loop.
            Some(t) if t <= Utc::now() || waiting => Duration::from_secs(1),
            Some(t) => (t - Utc::now()).to_std().unwrap_or_default().min(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        };
        tokio::select! {
            _ = state.push.deliver.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One attempt at one delivery.
async fn attempt(client: &reqwest::Client, target: &Target, due: Due, schedule: &[u64]) -> Attempt {
    let at = Utc::now();
    let timestamp = at.timestamp();
    let mut request = client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &due.id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = &target.secret {
        request = request.header("webhook-signature", secret.sign(&due.id, timestamp, due.body.as_bytes()));
    }
    let (status, error) = match request.body(due.body).send().await {
        Ok(response) => {
            let status = response.status();
            // The body is read (and dropped) so the connection can be reused.
            let _ = response.bytes().await;
            if status.is_success() {
                (Some(status.as_u16()), None)
            } else {
                (Some(status.as_u16()), Some(format!("the receiver answered {status}")))
            }
        }
        Err(e) => (None, Some(describe(&e))),
    };
    let delivered = error.is_none();
    let retry_at = if delivered {
        None
    } else {
        retry_delay(schedule, due.attempts as usize + 1)
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| at + d)
    };
    Attempt { seq: due.seq, at, status, error, delivered, retry_at }
}

/// A failed request said without the URL (it may carry a token of the receiver's).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        "no answer within the timeout".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "the request failed".to_string()
    };
    // The innermost cause says why (refused, reset, a refused address).
    let mut source = e.source();
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    if let Some(why) = last {
        text.push_str(": ");
        text.push_str(&why);
    }
    text
}

/// Records outcomes in batches: the audit record of what was delivered
/// first, then the delivery states; then frees their places in flight.
async fn recorder(state: AppState, mut rx: tokio::sync::mpsc::UnboundedReceiver<Outcome>, flight: InFlight) {
    let mut targets: HashMap<String, (String, Option<String>, String)> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        // Pushed subjects per rule, for the data tracker.
        let mut pushed: HashMap<&str, Vec<&str>> = HashMap::new();
        for o in batch.iter().filter(|o| o.attempt.delivered) {
            pushed.entry(o.rule.as_str()).or_default().push(o.subject.as_str());
        }
        let mut records = Vec::with_capacity(pushed.len());
        for (rule, subjects) in pushed {
            if !targets.contains_key(rule)
                && let Ok(Some((r, _, _))) = state.push.store.rule(rule).await
            {
                targets.insert(rule.to_string(), (r.owner, r.department, r.def.purpose));
            }
            let (owner, department, purpose) = targets.get(rule).cloned().unwrap_or_default();
            let mut hashes: Vec<String> = subjects.iter().map(|s| state.audit.subject_hash(s)).collect();
            hashes.sort();
            hashes.dedup();
            records.push(crate::audit::Record {
                principal: Some(owner).filter(|o| !o.is_empty()),
                department,
                action: "push".into(),
                outcome: "ok".into(),
                purpose: Some(purpose).filter(|p| !p.is_empty()),
                rows: Some(subjects.len() as u64),
                subjects: hashes,
                target: Some(rule.to_string()),
                detail: Some("webhook".into()),
                ..crate::audit::Record::default()
            });
        }
        // All at once: the audit writer commits them together.
        let written = futures::future::join_all(records.into_iter().map(|r| state.audit.append(r))).await;
        let mut audited = true;
        for e in written.into_iter().filter_map(Result::err) {
            tracing::error!(error = %e, "deliveries cannot be audited; they will be sent again");
            audited = false;
        }
        let attempts: Vec<Attempt> =
            batch.iter().filter(|o| audited || !o.attempt.delivered).map(|o| o.attempt.clone()).collect();
        if let Err(e) = state.push.store.record_attempts(attempts).await {
            tracing::error!(error = %e, "delivery outcomes cannot be recorded; they will be sent again");
        }
        for o in &batch {
            match (&o.attempt.error, o.attempt.retry_at) {
                (None, _) => {}
                (Some(e), Some(at)) => {
                    tracing::info!(rule = %o.rule, seq = o.attempt.seq, error = %e, retry_at = %at, "delivery failed, will retry")
                }
                (Some(e), None) => {
                    tracing::warn!(rule = %o.rule, seq = o.attempt.seq, error = %e, "delivery dead-lettered")
                }
            }
        }
        {
            let mut flight = in_flight(&flight);
            for o in &batch {
                if let Some(set) = flight.get_mut(&o.rule) {
                    set.remove(&o.attempt.seq);
                }
            }
        }
        metrics::counter!("gdx_push_delivered_total")
            .increment(batch.iter().filter(|o| o.attempt.delivered).count() as u64);
        state.push.deliver.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_stop() {
        let schedule = [5, 300, 1800, 7200, 18000, 36000];
        for (n, base) in schedule.iter().enumerate() {
            let d = retry_delay(&schedule, n + 1).expect("within the schedule").as_secs_f64();
            assert!(d >= *base as f64 * 0.85 && d <= *base as f64 * 1.15, "retry {}: {d}", n + 1);
        }
        assert_eq!(retry_delay(&schedule, 7), None);
        assert_eq!(retry_delay(&schedule, 0), None);
    }
}
