//! Parsing of cell text into typed values, and checks by semantic type.
//!
//! Dates come in the forms people actually type (`2024-01-02`, `2024/1/2`,
//! `20240102`, `2024.1.2`, `2024年1月2日`); timestamps without a zone are
//! Beijing time (UTC+8), the zone every department records in.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};

/// Days from 0001-01-01 (CE) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// `s` without surrounding white space; values that begin and end with a
/// visible ASCII character (nearly all) are returned as they are, unscanned.
fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) if f.is_ascii_graphic() && l.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// A date as days since 1970-01-01.
pub fn date(s: &str) -> Result<i32, String> {
    let d = parse_date(trim(s)).ok_or_else(|| format!("'{s}' is not a date (use 2024-01-02, 2024/1/2 or 20240102)"))?;
    Ok(chrono::Datelike::num_days_from_ce(&d) - UNIX_EPOCH_DAYS_FROM_CE)
}

/// The value of ASCII digits, or `None`.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `YYYYMMDD` as a date.
fn compact_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 8 {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(&b[..4])? as i32, digits(&b[4..6])?, digits(&b[6..])?)
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    // The common forms without allocating: 20240102 and 2024-01-02.
    if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        return compact_date(b);
    }
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        return NaiveDate::from_ymd_opt(digits(&b[..4])? as i32, digits(&b[5..7])?, digits(&b[8..])?);
    }
    let s = s.replace(['年', '月'], "-").replace('日', "");
    let mut it = s.split(['-', '/', '.']);
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || m.is_empty() || m.len() > 2 || d.is_empty() || d.len() > 2 {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"))
}

/// A timestamp as microseconds since the Unix epoch (UTC).
pub fn timestamp(s: &str) -> Result<i64, String> {
    let t = trim(s);
    let err = || format!("'{s}' is not a timestamp (use 2024-01-02T08:30:00+08:00 or 2024-01-02 08:30:00)");
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for f in
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y/%m/%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M"]
    {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, f) {
            return beijing().from_local_datetime(&naive).single().map(|dt| dt.timestamp_micros()).ok_or_else(err);
        }
    }
    // A bare date is midnight Beijing time.
    if let Some(d) = parse_date(t) {
        let naive = d.and_hms_opt(0, 0, 0).ok_or_else(err)?;
        return beijing().from_local_datetime(&naive).single().map(|dt| dt.timestamp_micros()).ok_or_else(err);
    }
    Err(err())
}

/// A 64-bit integer.
pub fn int64(s: &str) -> Result<i64, String> {
    trim(s).parse().map_err(|_| format!("'{s}' is not an integer"))
}

/// A 64-bit float.
pub fn float64(s: &str) -> Result<f64, String> {
    let v: f64 = trim(s).parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() { Ok(v) } else { Err(format!("'{s}' is not a finite number")) }
}

/// A boolean: true/false, 1/0, yes/no, t/f, y/n, 是/否.
pub fn boolean(s: &str) -> Result<bool, String> {
    match trim(s).to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "t" | "y" | "是" => Ok(true),
        "false" | "0" | "no" | "f" | "n" | "否" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (true/false, 1/0, 是/否)")),
    }
}

/// A decimal of `precision` digits, `scale` after the point, as the scaled integer.
pub fn decimal(s: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let t = trim(s);
    let bad = || format!("'{s}' is not a decimal number");
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale = scale.max(0) as usize;
    if frac.len() > scale {
        return Err(format!("'{s}' has more than {scale} decimal places"));
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale > precision as usize {
        return Err(format!("'{s}' has more than {} digits before the point", precision as usize - scale));
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', scale - frac.len())) {
        v = v * 10 + i128::from(b - b'0');
    }
    Ok(if neg { -v } else { v })
}

/// Weights of the resident ID number's check digit (GB 11643).
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check characters indexed by the weighted sum mod 11.
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// The check character of the first 17 digits of a resident ID number.
pub fn id_card_check(body: &[u8]) -> Option<u8> {
    if body.len() != 17 || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = body.iter().zip(ID_WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    Some(ID_CHECK[(sum % 11) as usize])
}

/// Checks an 18-character resident ID number (GB 11643): digits, a real birth
/// date, and the check character. Returns it normalised (upper-case `X`).
pub fn id_card(s: &str) -> Result<Option<String>, String> {
    let t = trim(s);
    let b = t.as_bytes();
    if b.len() != 18 {
        return Err("a resident ID number has 18 characters".into());
    }
    let check = id_card_check(&b[..17]).ok_or("a resident ID number has 17 digits before its check character")?;
    if compact_date(&b[6..14]).is_none() {
        return Err("the birth date inside the resident ID number is not a real date".into());
    }
    if b[17].to_ascii_uppercase() != check {
        return Err("the resident ID number's check character is wrong (GB 11643)".into());
    }
    // `None`: the value is stored as given; only a lower-case x or spaces are normalised.
    Ok((b[17] == b'x' || t.len() != s.len()).then(|| t.to_ascii_uppercase()))
}

/// Checks a unified social credit code (GB 32100); returns it upper-cased.
pub fn credit_code(s: &str) -> Result<Option<String>, String> {
    let t = trim(s);
    if t.len() != 18 {
        return Err("a unified social credit code has 18 characters".into());
    }
    let upper = t.bytes().any(|c| c.is_ascii_lowercase()).then(|| t.to_ascii_uppercase());
    if !gdx_catalog::validate::is_credit_code(upper.as_deref().unwrap_or(t)) {
        return Err(
            "the unified social credit code's check character is wrong or it uses letters outside GB 32100".into()
        );
    }
    Ok(upper.or_else(|| (t.len() != s.len()).then(|| t.to_string())))
}

/// Checks the shape of a mainland mobile number: 11 digits starting 13–19,
/// optionally after `+86` or `86`, with spaces or dashes between groups.
pub fn phone(s: &str) -> Result<Option<String>, String> {
    let t = trim(s);
    let mobile =
        |b: &[u8]| b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1]) && b.iter().all(u8::is_ascii_digit);
    if mobile(t.as_bytes()) {
        return Ok((t.len() != s.len()).then(|| t.to_string()));
    }
    let compact: String = t.chars().filter(|c| *c != ' ' && *c != '-').collect();
    let digits = compact
        .strip_prefix("+86")
        .or_else(|| compact.strip_prefix("86").filter(|r| r.len() == 11))
        .unwrap_or(&compact);
    if mobile(digits.as_bytes()) {
        Ok((t.len() != s.len()).then(|| t.to_string()))
    } else {
        Err(format!("'{s}' is not a mainland mobile number"))
    }
}

/// Applies the check of `semantic` (if it has one) to a string value:
/// `Ok(Some(v))` stores the normalised `v`, `Ok(None)` the value as given.
pub fn semantic(semantic: Option<&str>, s: &str) -> Result<Option<String>, String> {
    match semantic {
        Some("id_card") => id_card(s),
        Some("credit_code") => credit_code(s),
        Some("phone") => phone(s),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_people_write() {
        let d = date("2024-01-02").expect("iso");
        for s in ["2024/1/2", "20240102", "2024.01.02", "2024年1月2日", " 2024-1-02 "] {
            assert_eq!(date(s), Ok(d), "{s}");
        }
        assert_eq!(date("1970-01-01"), Ok(0));
        for s in ["2024-13-01", "2024-02-30", "24-01-02", "2024-01", "yesterday", "2024010"] {
            assert!(date(s).is_err(), "{s}");
        }
    }

    #[test]
    fn timestamps_default_to_beijing_time() {
        let utc = timestamp("2024-01-02T00:30:00Z").expect("rfc3339");
        assert_eq!(timestamp("2024-01-02 08:30:00"), Ok(utc));
        assert_eq!(timestamp("2024-01-02T08:30:00+08:00"), Ok(utc));
        assert!(timestamp("2024-01-02 25:00:00").is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal("1234.5", 12, 2), Ok(123_450));
        assert_eq!(decimal("-0.01", 12, 2), Ok(-1));
        assert_eq!(decimal("+7", 3, 0), Ok(7));
        assert!(decimal("1.234", 12, 2).is_err());
        assert!(decimal("12345", 5, 2).is_err());
        assert!(decimal("1e5", 12, 2).is_err());
        assert!(decimal(".", 12, 2).is_err());
    }

    #[test]
    fn resident_id_numbers() {
        // 11010519491231002X is the standard's published example.
        assert_eq!(id_card("11010519491231002x"), Ok(Some("11010519491231002X".into())));
        assert_eq!(id_card("11010519491231002X"), Ok(None));
        assert!(id_card("110105194912310021").is_err());
        assert!(id_card("110105194913310028").is_err());
        assert!(id_card("1101051949123100").is_err());
    }

    #[test]
    fn credit_codes_and_phones() {
        let body = "91441400MA4UXXXX1";
        let check = gdx_catalog::validate::credit_code_check(body.as_bytes()).expect("alphabet") as char;
        assert!(credit_code(&format!("{body}{check}")).is_ok());
        assert!(credit_code(&format!("{body}{}", if check == '0' { '1' } else { '0' })).is_err());
        for p in ["13812345678", "+86 138-1234-5678", "8613812345678"] {
            assert!(phone(p).is_ok(), "{p}");
        }
        for p in ["12812345678", "1381234567", "0753-2212345"] {
            assert!(phone(p).is_err(), "{p}");
        }
    }
}
