//! Column masks: what a reader sees of a value it may not see in clear.
//!
//! The vocabulary follows Apache Ranger (`redact`, `show_first_4`,
//! `show_last_4`, `hash`, `null`, `year_only`) plus Chinese personal-data
//! masks (`id_card`, `phone`, `person_name`). Masks apply to whole Arrow
//! arrays inside a governed scan, so a reader's SQL only ever sees the
//! masked values.
//!
//! `hash` is keyed (HMAC-SHA256 with the platform secret) and deterministic:
//! the same identifier hashes alike in every dataset, so hashed IDs still
//! join, while nobody without the key can test a guess against a hash. The
//! key lives in a [`HashKey`], which prints as `HashKey(..)` and is never
//! serialised.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, new_null_array};
use arrow::datatypes::{DataType, Date32Type};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A mask, by its API name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Letters become `x`/`X`, digits `n`, other characters `*`.
    Redact,
    /// The first four characters in clear, the rest redacted.
    ShowFirst4,
    /// The last four characters in clear, the rest redacted.
    ShowLast4,
    /// A keyed hash (64 hexadecimal characters), equal for equal values.
    Hash,
    /// No value at all.
    Null,
    /// Dates: the first of January of their year.
    YearOnly,
    /// Resident ID numbers: the six-digit region and the last four in clear (`441402********123X`).
    IdCard,
    /// Mobile numbers: the first three and last four digits in clear (`138****5678`).
    Phone,
    /// Personal names: the surname in clear (`张**`).
    PersonName,
    /// The value in clear.
    None,
}

impl Mask {
    /// Every mask, in API order.
    pub const ALL: [Mask; 10] = [
        Mask::Redact,
        Mask::ShowFirst4,
        Mask::ShowLast4,
        Mask::Hash,
        Mask::Null,
        Mask::YearOnly,
        Mask::IdCard,
        Mask::Phone,
        Mask::PersonName,
        Mask::None,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mask::Redact => "redact",
            Mask::ShowFirst4 => "show_first_4",
            Mask::ShowLast4 => "show_last_4",
            Mask::Hash => "hash",
            Mask::Null => "null",
            Mask::YearOnly => "year_only",
            Mask::IdCard => "id_card",
            Mask::Phone => "phone",
            Mask::PersonName => "person_name",
            Mask::None => "none",
        }
    }

    /// How much the mask hides: when several apply, the strongest wins
    /// (`null` > `hash` > `redact` > partial masks > `none`).
    pub fn strength(self) -> u8 {
        match self {
            Mask::Null => 4,
            Mask::Hash => 3,
            Mask::Redact => 2,
            Mask::ShowFirst4 | Mask::ShowLast4 | Mask::YearOnly | Mask::IdCard | Mask::Phone | Mask::PersonName => 1,
            Mask::None => 0,
        }
    }

    /// The stronger of two masks (the first on a tie).
    pub fn strongest(self, other: Mask) -> Mask {
        if other.strength() > self.strength() { other } else { self }
    }

    /// The default mask of a `personal` column outside its provider, by semantic type.
    pub fn default_for(semantic: Option<&str>) -> Mask {
        match semantic {
            Some("id_card" | "credit_code") => Mask::Hash,
            Some("person_name") => Mask::PersonName,
            Some("phone") => Mask::Phone,
            _ => Mask::Redact,
        }
    }

    /// The type of the masked column, given the clear column's type.
    pub fn output_type(self, input: &DataType) -> DataType {
        match self {
            Mask::None | Mask::Null => input.clone(),
            Mask::YearOnly if matches!(input, DataType::Date32) => DataType::Date32,
            Mask::YearOnly => input.clone(),
            _ => DataType::Utf8,
        }
    }
}

impl std::fmt::Display for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mask::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mask {s:?}; one of {}", Mask::ALL.map(Mask::as_str).join(", ")))
    }
}

/// The key of the `hash` mask (derived from the platform secret).
#[derive(Clone)]
pub struct HashKey {
    inner: Sha256,
    outer: Sha256,
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    /// An HMAC-SHA256 key.
    pub fn new(secret: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if secret.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            block[..secret.len()].copy_from_slice(secret);
        }
        let pad = |byte: u8| {
            let mut h = Sha256::new();
            h.update(block.map(|b| b ^ byte));
            h
        };
        Self { inner: pad(0x36), outer: pad(0x5c) }
    }

    /// HMAC-SHA256 of `value`, as 64 lowercase hexadecimal characters.
    pub fn hash(&self, value: &[u8]) -> String {
        let mut inner = self.inner.clone();
        inner.update(value);
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        hex::encode(outer.finalize())
    }
}

fn redact_char(c: char) -> char {
    if c.is_ascii_lowercase() {
        'x'
    } else if c.is_ascii_uppercase() {
        'X'
    } else if c.is_ascii_digit() {
        'n'
    } else if c.is_whitespace() || c == '-' {
        c
    } else {
        '*'
    }
}

/// Masks one text value.
fn mask_text(mask: Mask, s: &str, key: &HashKey) -> String {
    let n = s.chars().count();
    match mask {
        Mask::Redact => s.chars().map(redact_char).collect(),
        Mask::ShowFirst4 => s.chars().enumerate().map(|(i, c)| if i < 4 { c } else { redact_char(c) }).collect(),
        Mask::ShowLast4 => s.chars().enumerate().map(|(i, c)| if i + 4 >= n { c } else { redact_char(c) }).collect(),
        Mask::Hash => key.hash(s.as_bytes()),
        Mask::IdCard => keep_ends(s, n, 6, 4),
        Mask::Phone => {
            // Keep a +86 prefix's digits out of the count: mask the subscriber part.
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            let digits = digits.strip_prefix("86").filter(|d| d.len() == 11).unwrap_or(&digits).to_string();
            let m = digits.chars().count();
            keep_ends(&digits, m, 3, 4)
        }
        Mask::PersonName => s.chars().enumerate().map(|(i, c)| if i == 0 { c } else { '*' }).collect(),
        // Not text masks: callers handle them before this point.
        Mask::YearOnly | Mask::Null | Mask::None => s.to_string(),
    }
}

/// `first` characters and `last` characters in clear, `*` between; fully
/// starred when the value is too short to keep anything hidden.
fn keep_ends(s: &str, n: usize, first: usize, last: usize) -> String {
    if n <= first + last {
        return "*".repeat(n);
    }
    s.chars().enumerate().map(|(i, c)| if i < first || i + last >= n { c } else { '*' }).collect()
}

/// Applies `mask` to a column. Values are masked as their text form (dates
/// as `YYYY-MM-DD`, numbers as written), except `null`, `none` and
/// `year_only` on dates, which keep the column's type.
pub fn apply(mask: Mask, column: &ArrayRef, key: &HashKey) -> Result<ArrayRef, arrow::error::ArrowError> {
    match mask {
        Mask::None => return Ok(column.clone()),
        Mask::Null => return Ok(new_null_array(column.data_type(), column.len())),
        Mask::YearOnly => return year_only(column),
        _ => {}
    }
    let text = arrow::compute::cast(column, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let mut out = StringBuilder::with_capacity(text.len(), text.value_data().len());
    for v in text.iter() {
        match v {
            Some(s) => out.append_value(mask_text(mask, s, key)),
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

/// Dates become the first of January of their year; timestamps the first
/// instant of it; text `YYYY…` keeps its first four characters; anything
/// else becomes null.
fn year_only(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    use chrono::Datelike;
    match column.data_type() {
        DataType::Date32 => {
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
            let out: arrow::array::Date32Array = column.as_primitive::<Date32Type>().unary(|d| {
                let date = epoch + chrono::Duration::days(i64::from(d));
                let jan1 = chrono::NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date);
                (jan1 - epoch).num_days() as i32
            });
            Ok(Arc::new(out))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = arrow::compute::cast(column, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            let out: arrow::array::StringArray =
                text.iter().map(|v| v.map(|s| s.chars().take(4).collect::<String>())).collect();
            Ok(Arc::new(out))
        }
        other => Ok(new_null_array(other, column.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int64Array, StringArray};

    fn texts(a: &ArrayRef) -> Vec<Option<String>> {
        a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn every_mask_on_text() {
        let key = HashKey::new(b"secret");
        let col: ArrayRef = Arc::new(StringArray::from(vec![Some("44140219800101123X"), None]));
        let m = |mask| texts(&apply(mask, &col, &key).expect("mask"))[0].clone().expect("value");
        assert_eq!(m(Mask::Redact), "nnnnnnnnnnnnnnnnnX");
        assert_eq!(m(Mask::ShowFirst4), "4414nnnnnnnnnnnnnX");
        assert_eq!(m(Mask::ShowLast4), "nnnnnnnnnnnnnn123X");
        assert_eq!(m(Mask::IdCard), "441402********123X");
        assert_eq!(m(Mask::None), "44140219800101123X");
        assert_eq!(m(Mask::Hash).len(), 64);
        assert_eq!(apply(Mask::Null, &col, &key).expect("null").null_count(), 2);
        let phone: ArrayRef = Arc::new(StringArray::from(vec!["13812345678", "+86 139-1234-5678", "12"]));
        assert_eq!(
            texts(&apply(Mask::Phone, &phone, &key).expect("phone")),
            vec![Some("138****5678".to_string()), Some("139****5678".to_string()), Some("**".to_string())]
        );
        let names: ArrayRef = Arc::new(StringArray::from(vec!["张三", "欧阳娜娜"]));
        assert_eq!(
            texts(&apply(Mask::PersonName, &names, &key).expect("name")),
            vec![Some("张*".to_string()), Some("欧***".to_string())]
        );
        assert_eq!(
            texts(&apply(Mask::Redact, &names, &key).expect("redact")),
            vec![Some("**".to_string()), Some("****".to_string())]
        );
    }

    #[test]
    fn the_hash_is_keyed_and_deterministic() {
        let (a, b) = (HashKey::new(b"one key"), HashKey::new(b"another key"));
        assert_eq!(a.hash(b"441402"), a.hash(b"441402"));
        assert_ne!(a.hash(b"441402"), b.hash(b"441402"));
        assert_ne!(a.hash(b"441402"), hex::encode(Sha256::digest(b"441402")));
        // RFC 4231 test case 2.
        assert_eq!(
            HashKey::new(b"Jefe").hash(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{a:?}"), "HashKey(..)");
    }

    #[test]
    fn year_only_keeps_dates_as_dates() {
        let key = HashKey::new(b"k");
        // 1990-07-15 is day 7500 after the epoch.
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![Some(7500), None]));
        let out = apply(Mask::YearOnly, &dates, &key).expect("year");
        let out = out.as_primitive::<Date32Type>();
        assert_eq!(out.value_as_date(0), chrono::NaiveDate::from_ymd_opt(1990, 1, 1));
        assert!(out.is_null(1));
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![5]));
        assert_eq!(apply(Mask::YearOnly, &numbers, &key).expect("year").null_count(), 1);
        assert_eq!(texts(&apply(Mask::ShowLast4, &numbers, &key).expect("last 4")), vec![Some("5".to_string())]);
    }

    #[test]
    fn the_strongest_mask_wins() {
        assert_eq!(Mask::PersonName.strongest(Mask::Hash), Mask::Hash);
        assert_eq!(Mask::Null.strongest(Mask::Hash), Mask::Null);
        assert_eq!(Mask::None.strongest(Mask::ShowLast4), Mask::ShowLast4);
        assert_eq!(Mask::Redact.strongest(Mask::IdCard), Mask::Redact);
        assert_eq!("show_last_4".parse::<Mask>(), Ok(Mask::ShowLast4));
        assert!("sha1".parse::<Mask>().is_err());
        assert_eq!(Mask::default_for(Some("credit_code")), Mask::Hash);
        assert_eq!(Mask::default_for(Some("address")), Mask::Redact);
    }
}
