//! Per-principal limits: a request rate (token bucket), concurrent queries,
//! and a watch on how many distinct subjects a principal looks up in a day.
//!
//! All three are kept in memory: a restart forgets the buckets and the
//! day's subjects, which is the safe direction for the first two and only
//! delays an alert for the third. The audit log keeps every lookup anyway.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use gdx_policies::DataAuthorizer;

use crate::config::LimitSettings;

/// The limits of one running server.
#[derive(Debug)]
pub struct Limiter {
    settings: LimitSettings,
    buckets: Mutex<HashMap<String, Bucket>>,
    queries: Mutex<HashMap<String, usize>>,
    subjects: Mutex<HashMap<String, DaySubjects>>,
    /// Rows received under each grant with a quota, and the day they count for.
    quotas: Mutex<HashMap<String, (NaiveDate, u64)>>,
}

/// A token bucket: `rate` tokens a second, holding at most two seconds' worth.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The distinct subjects one principal looked up on one day, counted up to
/// the alert threshold (no further: memory stays bounded).
#[derive(Debug, Default)]
struct DaySubjects {
    day: Option<NaiveDate>,
    seen: HashSet<u64>,
    alerted: bool,
}

/// A running query; dropping it frees the principal's slot.
#[derive(Debug)]
pub struct QueryPermit {
    limiter: Arc<Limiter>,
    principal: String,
}

impl Drop for QueryPermit {
    fn drop(&mut self) {
        let mut running = self.limiter.queries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.principal);
            }
        }
    }
}

/// A principal crossed its alert threshold of distinct subjects today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAlert {
    /// The threshold crossed.
    pub threshold: u64,
    /// The day (China Standard Time).
    pub day: NaiveDate,
}

impl Limiter {
    /// Limits as configured.
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::default(),
            queries: Mutex::default(),
            subjects: Mutex::default(),
            quotas: Mutex::default(),
        }
    }

    /// Takes one request from the principal's bucket, or says how long to
    /// wait before the next one would pass.
    pub fn admit(&self, principal: &str) -> Result<(), Duration> {
        self.admit_at(principal, Instant::now())
    }

    fn admit_at(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.settings.requests_per_second_of(principal);
        if rate == 0 {
            return Ok(());
        }
        let rate = rate as f64;
        let capacity = rate * BURST_SECONDS;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(principal.to_string()).or_insert(Bucket { tokens: capacity, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// A slot for one more query of the principal, if it has one free.
    pub fn start_query(self: &Arc<Self>, principal: &str) -> Option<QueryPermit> {
        let cap = self.settings.concurrent_queries_of(principal);
        let mut running = self.queries.lock().unwrap_or_else(|p| p.into_inner());
        let n = running.entry(principal.to_string()).or_insert(0);
        if cap != 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(QueryPermit { limiter: Arc::clone(self), principal: principal.to_string() })
    }

    /// Counts the subjects (their audit hashes) a principal looked up; says
    /// so once a day when the distinct ones reach its threshold.
    pub fn observe_subjects(&self, principal: &str, day: NaiveDate, hashes: &[String]) -> Option<SubjectAlert> {
        let threshold = self.settings.distinct_subjects_per_day_of(principal);
        if threshold == 0 || hashes.is_empty() {
            return None;
        }
        let mut all = self.subjects.lock().unwrap_or_else(|p| p.into_inner());
        let mine = all.entry(principal.to_string()).or_default();
        if mine.day != Some(day) {
            *mine = DaySubjects { day: Some(day), ..DaySubjects::default() };
        }
        if mine.alerted {
            return None;
        }
        for h in hashes {
            mine.seen.insert(short_hash(h));
            if mine.seen.len() as u64 >= threshold {
                mine.alerted = true;
                mine.seen = HashSet::new();
                return Some(SubjectAlert { threshold, day });
            }
        }
        None
    }
}

impl Limiter {
    /// The first of `datasets` that `department` reads under a grant whose
    /// rows for the day of `now` are spent: the dataset and the grant's quota.
    pub fn quota_spent<'a>(
        &self,
        data: &DataAuthorizer,
        department: &str,
        datasets: impl IntoIterator<Item = &'a String>,
        now: DateTime<Utc>,
    ) -> Option<(String, u64)> {
        let day = quota_day(now);
        let used = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        for dataset in datasets {
            let Some(grant) = data.grant(department, dataset, now) else { continue };
            let Some(quota) = grant.rows_per_day else { continue };
            let spent = used.get(&grant.id).filter(|(d, _)| *d == day).map_or(0, |(_, n)| *n);
            if spent >= quota {
                return Some((dataset.clone(), quota));
            }
        }
        None
    }

    /// Counts `rows` received by `department` from each of `datasets`
    /// against its grants with a quota.
    pub fn count_quota_rows(
        &self,
        data: &DataAuthorizer,
        department: &str,
        datasets: &[String],
        rows: u64,
        now: DateTime<Utc>,
    ) {
        if rows == 0 {
            return;
        }
        let day = quota_day(now);
        let mut used = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        for dataset in datasets {
            let Some(grant) = data.grant(department, dataset, now) else { continue };
            if grant.rows_per_day.is_none() {
                continue;
            }
            let entry = used.entry(grant.id).or_insert((day, 0));
            if entry.0 != day {
                *entry = (day, 0);
            }
            entry.1 = entry.1.saturating_add(rows);
        }
    }
}

/// The day (Asia/Shanghai) quotas count `now` in.
fn quota_day(now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&crate::push::cron::shanghai()).date_naive()
}

/// Seconds of a principal's rate a burst may spend at once.
const BURST_SECONDS: f64 = 2.0;

/// 64 bits of a subject's audit hash (hex), enough to tell subjects apart
/// when counting them; anything else is hashed again.
fn short_hash(h: &str) -> u64 {
    match h.get(..16).and_then(|s| u64::from_str_radix(s, 16).ok()) {
        Some(v) => v,
        None => {
            use std::hash::{Hash, Hasher};
            let mut s = std::collections::hash_map::DefaultHasher::new();
            h.hash(&mut s);
            s.finish()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::PrincipalLimits;

    fn settings() -> LimitSettings {
        let mut s = LimitSettings {
            requests_per_second: 10,
            concurrent_queries: 2,
            distinct_subjects_per_day: 3,
            ..Default::default()
        };
        s.principals.insert(
            "busy".into(),
            PrincipalLimits {
                requests_per_second: Some(0),
                concurrent_queries: Some(0),
                distinct_subjects_per_day: Some(0),
            },
        );
        s
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_refills_at_the_rate() {
        let l = Limiter::new(settings());
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(l.admit_at("a", t0).is_ok());
        }
        let wait = l.admit_at("a", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another principal has its own bucket.
        assert!(l.admit_at("b", t0).is_ok());
        // A tenth of a second later one more request passes, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.admit_at("a", t1).is_ok());
        assert!(l.admit_at("a", t1).is_err());
        // An override of 0 means unlimited.
        for _ in 0..1000 {
            assert!(l.admit_at("busy", t0).is_ok());
        }
    }

    #[test]
    fn query_slots_are_freed_when_a_permit_is_dropped() {
        let l = Arc::new(Limiter::new(settings()));
        let a = l.start_query("a").unwrap();
        let b = l.start_query("a").unwrap();
        assert!(l.start_query("a").is_none());
        assert!(l.start_query("other").is_some());
        drop(a);
        let c = l.start_query("a").unwrap();
        drop((b, c));
        assert!(l.queries.lock().unwrap().is_empty());
        let many: Vec<_> = (0..50).map(|_| l.start_query("busy").unwrap()).collect();
        assert_eq!(many.len(), 50);
    }

    #[test]
    fn distinct_subjects_alert_once_a_day() {
        let l = Limiter::new(settings());
        let d1 = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let d2 = d1.succ_opt().unwrap();
        let h = |s: &str| {
            format!("{:016x}{}", s.len() as u64 * 7919 + s.bytes().map(u64::from).sum::<u64>(), "0".repeat(48))
        };
        assert_eq!(l.observe_subjects("a", d1, &[h("x"), h("x")]), None);
        assert_eq!(l.observe_subjects("a", d1, &[h("yy")]), None);
        let alert = l.observe_subjects("a", d1, &[h("x"), h("zzz")]).unwrap();
        assert_eq!(alert.threshold, 3);
        assert_eq!(l.observe_subjects("a", d1, &[h("wwww")]), None, "one alert a day");
        assert_eq!(l.observe_subjects("a", d2, &[h("x"), h("yy")]), None, "a new day starts from nothing");
        assert!(l.observe_subjects("a", d2, &[h("zzz")]).is_some());
        assert_eq!(l.observe_subjects("busy", d1, &[h("x"), h("yy"), h("zzz"), h("wwww")]), None);
    }
}
