//! Working days in Asia/Shanghai, for deadlines counted in working days
//! (a sharing request is answered within 10 of them).
//!
//! Weekends and public holidays are not working days; the make-up working
//! days (调休上班) that fall on weekends are. The State Council publishes each
//! year's arrangement late in the year before; GDX ships the years it has
//! (`catalog/calendar/cn-holidays-<year>.json`) and takes replacement files
//! of the same shape. A year without an arrangement counts weekends only,
//! and every deadline that crosses it says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, TimeZone, Utc, Weekday};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The calendars shipped with GDX.
const SHIPPED: &[&str] = &[include_str!("../calendar/cn-holidays-2026.json")];

/// Asia/Shanghai: UTC+8, without daylight saving since 1991.
fn shanghai() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("a valid offset"))
}

#[derive(Debug, Deserialize)]
struct YearFile {
    year: i32,
    #[serde(default)]
    source: Option<String>,
    holidays: Vec<Holiday>,
    #[serde(default)]
    makeup_workdays: Vec<NaiveDate>,
}

#[derive(Debug, Deserialize)]
struct Holiday {
    name: String,
    from: NaiveDate,
    to: NaiveDate,
}

#[derive(Debug, Clone, Default)]
struct Year {
    source: Option<String>,
    /// Holiday dates with the holiday's name.
    holidays: BTreeMap<NaiveDate, String>,
    makeup: BTreeSet<NaiveDate>,
}

/// Public holidays and make-up working days, by year.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    years: BTreeMap<i32, Year>,
}

/// A deadline and how it was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The end (23:59:59 in Asia/Shanghai) of the last working day.
    pub due_at: DateTime<Utc>,
    /// The last working day, in Asia/Shanghai.
    pub due_on: NaiveDate,
    /// Years the count crossed without a holiday arrangement (weekends only).
    pub uncertain_years: Vec<i32>,
    /// How it was counted, e.g. "10 working days after 2026-09-28; skipped 国庆节; counted make-up day 2026-10-10".
    pub explanation: String,
}

impl Calendar {
    /// The calendars shipped with GDX.
    pub fn shipped() -> Self {
        let mut c = Calendar::default();
        for text in SHIPPED {
            // The shipped files are part of the build and are tested to parse.
            if let Err(e) = c.add_json(text, "shipped calendar") {
                tracing::error!(error = %e, "a shipped holiday calendar does not parse");
            }
        }
        c
    }

    /// The shipped calendars, with each file given replacing the year it holds.
    pub fn with_files(files: &[impl AsRef<Path>]) -> Result<Self> {
        let mut c = Calendar::shipped();
        for f in files {
            let path = f.as_ref();
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid("holiday_calendar", format!("{}: {e}", path.display())))?;
            c.add_json(&text, &path.display().to_string())?;
        }
        Ok(c)
    }

    /// Adds (or replaces) one year from its JSON (`{"year", "holidays": [{"name", "from", "to"}], "makeup_workdays": [...]}`).
    pub fn add_json(&mut self, text: &str, origin: &str) -> Result<()> {
        let invalid = |m: String| Error::invalid("holiday_calendar", format!("{origin}: {m}"));
        let file: YearFile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut year = Year { source: file.source, ..Year::default() };
        for h in file.holidays {
            if h.from > h.to || h.from.year() != file.year || h.to.year() != file.year {
                return Err(invalid(format!("holiday {} runs {}..{} outside {}", h.name, h.from, h.to, file.year)));
            }
            let mut d = h.from;
            while d <= h.to {
                year.holidays.insert(d, h.name.clone());
                d += Duration::days(1);
            }
        }
        for d in file.makeup_workdays {
            if d.year() != file.year || year.holidays.contains_key(&d) {
                return Err(invalid(format!("make-up working day {d} is outside {} or a holiday", file.year)));
            }
            year.makeup.insert(d);
        }
        self.years.insert(file.year, year);
        Ok(())
    }

    /// The years with an arrangement.
    pub fn years(&self) -> Vec<i32> {
        self.years.keys().copied().collect()
    }

    /// Where a year's arrangement comes from, as its file says.
    pub fn source(&self, year: i32) -> Option<&str> {
        self.years.get(&year).and_then(|y| y.source.as_deref())
    }

    /// Whether `day` (in Asia/Shanghai) is a working day; `None` for the
    /// year's status when the year has no arrangement (weekends only then).
    pub fn is_working_day(&self, day: NaiveDate) -> (bool, Option<&str>) {
        let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        match self.years.get(&day.year()) {
            None => (!weekend, None),
            Some(y) if y.makeup.contains(&day) => (true, Some("make-up working day")),
            Some(y) => match y.holidays.get(&day) {
                Some(name) => (false, Some(name.as_str())),
                None => (!weekend, Some("")),
            },
        }
    }

    /// The end of the `n`th working day after the day of `from` (in Asia/Shanghai).
    pub fn add_working_days(&self, from: DateTime<Utc>, n: u32) -> Deadline {
        let start = from.with_timezone(&shanghai()).date_naive();
        let mut day = start;
        let mut counted = 0;
        let mut skipped: Vec<String> = Vec::new();
        let mut makeup: Vec<NaiveDate> = Vec::new();
        let mut uncertain: BTreeSet<i32> = BTreeSet::new();
        while counted < n {
            day += Duration::days(1);
            let (working, why) = self.is_working_day(day);
            match why {
                None => {
                    uncertain.insert(day.year());
                }
                Some("make-up working day") => makeup.push(day),
                Some(name) if !working && !name.is_empty() && !skipped.iter().any(|s| s == name) => {
                    skipped.push(name.to_string())
                }
                _ => {}
            }
            if working {
                counted += 1;
            }
        }
        let end = day.and_hms_opt(23, 59, 59).unwrap_or_default();
        let due_at = shanghai().from_local_datetime(&end).single().map(|t| t.with_timezone(&Utc)).unwrap_or(from);
        let mut explanation = format!("{n} working days after {start} (Asia/Shanghai), due by the end of {day}");
        if !skipped.is_empty() {
            explanation.push_str(&format!("; holidays skipped: {}", skipped.join("、")));
        }
        if !makeup.is_empty() {
            let days: Vec<String> = makeup.iter().map(|d| d.to_string()).collect();
            explanation.push_str(&format!("; make-up working days counted: {}", days.join(", ")));
        }
        let uncertain_years: Vec<i32> = uncertain.into_iter().collect();
        if !uncertain_years.is_empty() {
            let years: Vec<String> = uncertain_years.iter().map(|y| y.to_string()).collect();
            explanation.push_str(&format!(
                "; no holiday arrangement for {}: weekends only were skipped there, the deadline may move when it is published",
                years.join(", ")
            ));
        }
        Deadline { due_at, due_on: day, uncertain_years, explanation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str, time: &str) -> DateTime<Utc> {
        let local =
            chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S").expect("time");
        shanghai().from_local_datetime(&local).single().expect("local").with_timezone(&Utc)
    }

    #[test]
    fn the_shipped_calendar_knows_2026() {
        let c = Calendar::shipped();
        assert_eq!(c.years(), vec![2026]);
        assert_eq!(c.is_working_day(NaiveDate::from_ymd_opt(2026, 10, 1).expect("d")), (false, Some("国庆节")));
        assert!(c.is_working_day(NaiveDate::from_ymd_opt(2026, 10, 10).expect("d")).0, "a make-up Saturday");
        assert!(!c.is_working_day(NaiveDate::from_ymd_opt(2026, 10, 11).expect("d")).0, "a Sunday");
        assert!(c.is_working_day(NaiveDate::from_ymd_opt(2026, 10, 12).expect("d")).0);
        assert!(c.source(2026).is_some_and(|s| s.contains("2025-11-04")));
    }

    #[test]
    fn across_national_day_and_a_make_up_saturday() {
        // Monday 28 September: 29, 30; 1–7 October off; 8, 9, Saturday 10 (make-up); 12–16.
        let d = Calendar::shipped().add_working_days(at("2026-09-28", "10:00:00"), 10);
        assert_eq!(d.due_on, NaiveDate::from_ymd_opt(2026, 10, 16).expect("d"));
        assert_eq!(d.due_at, at("2026-10-16", "23:59:59"));
        assert!(d.uncertain_years.is_empty());
        assert!(d.explanation.contains("国庆节") && d.explanation.contains("2026-10-10"), "{}", d.explanation);
    }

    #[test]
    fn across_the_spring_festival() {
        // Friday 13 February: Saturday 14 (make-up); 15–23 off; 24–27; Saturday 28 (make-up); 2–5 March.
        let d = Calendar::shipped().add_working_days(at("2026-02-13", "16:30:00"), 10);
        assert_eq!(d.due_on, NaiveDate::from_ymd_opt(2026, 3, 5).expect("d"));
    }

    #[test]
    fn the_day_is_taken_in_shanghai() {
        // 23:30 UTC on Sunday 27 September is Monday 28 September in Shanghai.
        let utc = DateTime::parse_from_rfc3339("2026-09-27T23:30:00Z").expect("t").with_timezone(&Utc);
        assert_eq!(
            Calendar::shipped().add_working_days(utc, 10).due_on,
            NaiveDate::from_ymd_opt(2026, 10, 16).expect("d")
        );
    }

    #[test]
    fn a_year_without_an_arrangement_counts_weekends_and_says_so() {
        let d = Calendar::shipped().add_working_days(at("2026-12-28", "09:00:00"), 10);
        // 29, 30, 31 December; 2027 by weekends only: 1 January counted, 4–8, 11.
        assert_eq!(d.due_on, NaiveDate::from_ymd_opt(2027, 1, 11).expect("d"));
        assert_eq!(d.uncertain_years, vec![2027]);
        assert!(d.explanation.contains("no holiday arrangement for 2027"), "{}", d.explanation);
    }

    #[test]
    fn a_file_replaces_its_year_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("2027.json");
        std::fs::write(
            &f,
            r#"{"year": 2027, "holidays": [{"name": "元旦", "from": "2027-01-01", "to": "2027-01-03"}], "makeup_workdays": []}"#,
        )
        .expect("write");
        let c = Calendar::with_files(&[&f]).expect("calendar");
        assert_eq!(c.years(), vec![2026, 2027]);
        let d = c.add_working_days(at("2026-12-28", "09:00:00"), 10);
        // 1–3 January now a holiday: 29, 30, 31; 4–8; 11, 12.
        assert_eq!((d.due_on, d.uncertain_years.is_empty()), (NaiveDate::from_ymd_opt(2027, 1, 12).expect("d"), true));
        std::fs::write(&f, r#"{"year": 2027, "holidays": [{"name": "x", "from": "2026-12-31", "to": "2027-01-01"}]}"#)
            .expect("write");
        assert!(Calendar::with_files(&[&f]).is_err());
        std::fs::write(&f, "not json").expect("write");
        assert!(Calendar::with_files(&[&f]).is_err());
    }
}
