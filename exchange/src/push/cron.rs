//! Cron schedules of push rules: the five classic fields (minute, hour, day
//! of month, month, day of week), read in Asia/Shanghai time.
//!
//! Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those; day of week counts 0 (or 7) as Sunday. As
//! in Vixie cron, when both day fields are restricted a day matches either.

use chrono::{DateTime, Datelike, Duration, FixedOffset, TimeZone, Timelike, Utc};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Asia/Shanghai: UTC+8 all year (no daylight saving time since 1991).
pub fn shanghai() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

impl Schedule {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "a schedule has five fields (minute hour day-of-month month day-of-week), this one has {}",
                fields.len()
            ));
        }
        let weekdays = field(fields[4], 0, 7, "day of week")?;
        // 7 is Sunday too.
        let weekdays = (weekdays | ((weekdays >> 7) & 1)) & 0x7f;
        Ok(Schedule {
            minutes: field(fields[0], 0, 59, "minute")?,
            hours: field(fields[1], 0, 23, "hour")?,
            days: field(fields[2], 1, 31, "day of month")?,
            months: field(fields[3], 1, 12, "month")?,
            weekdays,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    fn day_matches(&self, t: &DateTime<FixedOffset>) -> bool {
        let dom = (self.days >> t.day()) & 1 == 1;
        let dow = (self.weekdays >> t.weekday().num_days_from_sunday()) & 1 == 1;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` that the schedule names, if
    /// any within the next eight years (a schedule such as `0 0 31 2 *`
    /// names none).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = shanghai();
        let start = after.with_timezone(&tz).with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut t = start;
        let limit = start + Duration::days(366 * 8);
        while t < limit {
            if (self.months >> t.month()) & 1 == 0 {
                // The first minute of the next month.
                let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
                t = tz.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = tz.with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0).single()? + Duration::days(1);
                continue;
            }
            if (self.hours >> t.hour()) & 1 == 0 {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if (self.minutes >> t.minute()) & 1 == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t.with_timezone(&Utc));
        }
        None
    }
}

/// The bit set of one field's values.
fn field(text: &str, min: u32, max: u32, name: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{name} field '{text}': {why}");
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad("the step is not a number"))?;
                if step == 0 {
                    return Err(bad("the step is 0"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            let n: u32 = s.parse().map_err(|_| bad(&format!("'{s}' is not a number")))?;
            if n < min || n > max {
                return Err(bad(&format!("{n} is outside {min}-{max}")));
            }
            Ok(n)
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                // `a/n` runs from a to the end, as in Vixie cron.
                None if step > 1 => (number(r)?, max),
                None => {
                    let n = number(r)?;
                    (n, n)
                }
            },
        };
        if lo > hi {
            return Err(bad(&format!("the range {lo}-{hi} is backwards")));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn next_times_are_in_shanghai() {
        // 08:00 every day in Shanghai is 00:00 UTC.
        let daily = Schedule::parse("0 8 * * *").expect("parses");
        assert_eq!(daily.next_after(at("2026-12-01T23:59:00Z")), Some(at("2026-12-02T00:00:00Z")));
        assert_eq!(daily.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-03T00:00:00Z")));
        let every15 = Schedule::parse("*/15 * * * *").expect("parses");
        assert_eq!(every15.next_after(at("2026-12-02T10:07:31Z")), Some(at("2026-12-02T10:15:00Z")));
        // Mondays to Fridays at 09:30.
        let weekdays = Schedule::parse("30 9 * * 1-5").expect("parses");
        // 2026-12-05 is a Saturday: the next is Monday the 7th, 09:30 +08:00.
        assert_eq!(weekdays.next_after(at("2026-12-04T02:00:00Z")), Some(at("2026-12-07T01:30:00Z")));
        // The first of each quarter; Sunday as 7.
        let quarterly = Schedule::parse("0 0 1 1,4,7,10 *").expect("parses");
        assert_eq!(quarterly.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-31T16:00:00Z")));
        let sundays = Schedule::parse("0 12 * * 7").expect("parses");
        assert_eq!(sundays.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-06T04:00:00Z")));
        // Either day field matches when both are restricted.
        let either = Schedule::parse("0 0 15 * 1").expect("parses");
        assert_eq!(either.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-06T16:00:00Z")));
        assert_eq!(Schedule::parse("0 0 31 2 *").expect("parses").next_after(at("2026-12-02T00:00:00Z")), None);
    }

    #[test]
    fn malformed_schedules_say_why() {
        for (text, needle) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "outside 0-59"),
            ("* * 0 * *", "outside 1-31"),
            ("*/0 * * * *", "step is 0"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
        ] {
            let e = Schedule::parse(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
