//! Checks that turn client input into catalogue objects, collecting every problem.

use std::collections::HashSet;
use std::str::FromStr;

use chrono::NaiveDate;

use crate::error::{Error, FieldError, Result};
use crate::model::*;

/// Names that no department or dataset may take: they are schemas of the query engine.
pub const RESERVED_NAMES: &[&str] = &["gdx", "information_schema", "pg_catalog", "public", "datafusion"];

/// Collects field errors and turns them into one [`Error::Validation`].
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok(())` when nothing was recorded.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::Validation { errors: self.0 }) }
    }

    /// A required value, recording its absence.
    pub fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(field, "is required");
        }
        value
    }

    /// A required, non-blank text of at most `max` characters.
    pub fn text(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        let v = self.required(field, value)?;
        if v.trim().is_empty() {
            self.push(field, "must not be blank");
            return None;
        }
        self.optional_text(field, Some(v), max)
    }

    /// An optional text: trimmed, blank is absent, at most `max` characters.
    pub fn optional_text(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        let v = value?.trim().to_string();
        if v.is_empty() {
            return None;
        }
        if v.chars().count() > max {
            self.push(field, format!("must be at most {max} characters"));
            return None;
        }
        if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            self.push(field, "must not contain control characters");
            return None;
        }
        Some(v)
    }

    /// Parses a value of a closed set.
    pub fn parse<T: FromStr<Err = String>>(&mut self, field: &str, value: Option<String>) -> Option<T> {
        match value?.parse() {
            Ok(v) => Some(v),
            Err(msg) => {
                self.push(field, msg);
                None
            }
        }
    }
}

/// Whether `s` is a lowercase SQL identifier `[a-z][a-z0-9_]{0,62}`.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Checks a department id or dataset name: an identifier that is not reserved.
pub fn check_name(p: &mut Problems, field: &str, value: &str) -> bool {
    if !is_identifier(value) {
        p.push(field, "must be a lowercase SQL identifier matching [a-z][a-z0-9_]{0,62}");
        false
    } else if RESERVED_NAMES.contains(&value) {
        p.push(field, format!("'{value}' is reserved"));
        false
    } else {
        true
    }
}

/// Whether `s` is a principal id: `[a-z][a-z0-9_.-]{0,62}`.
pub fn is_principal_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'))
}

/// Check character of a 9-character organisation code (GB 11714) over its first 8 characters.
fn gb11714_check(body: &[u8]) -> Option<u8> {
    const W: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    let mut sum = 0;
    for (c, w) in body.iter().zip(W) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        sum += v * w;
    }
    Some(match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        n => b'0' + n as u8,
    })
}

/// The alphabet of unified social credit codes (GB 32100): no I, O, S, V, Z.
pub const CREDIT_CODE_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Check symbol of an 18-character unified social credit code over its first 17 symbols.
pub fn credit_code_check(body: &[u8]) -> Option<u8> {
    const W: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    let mut sum = 0;
    for (c, w) in body.iter().zip(W) {
        sum += CREDIT_CODE_ALPHABET.iter().position(|a| a == c)? * w;
    }
    Some(CREDIT_CODE_ALPHABET[(31 - sum % 31) % 31])
}

/// Whether `s` is a valid unified social credit code (GB 32100), check symbol included.
pub fn is_credit_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 18 && credit_code_check(&b[..17]) == Some(b[17])
}

/// Whether `s` is an organisation code (GB 11714, 9 characters) or a credit code (GB 32100).
pub fn is_org_code(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        9 => gb11714_check(&b[..8]) == Some(b[8]),
        18 => is_credit_code(s),
        _ => false,
    }
}

/// Whether `s` is an administrative division code of 6 or 12 digits.
pub fn is_region_code(s: &str) -> bool {
    (s.len() == 6 || s.len() == 12) && s.bytes().all(|c| c.is_ascii_digit())
}

/// Whether `s` looks like a catalogue resource code: segments of letters and digits joined by `-` or `/`.
pub fn is_resource_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split(['-', '/']).all(|seg| !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// Checks a new department.
pub fn department(input: NewDepartment) -> Result<Department> {
    let mut p = Problems::default();
    let id = p.required("id", input.id);
    if let Some(id) = &id {
        check_name(&mut p, "id", id);
    }
    let name = p.text("name", input.name, 200);
    let org_code = p.optional_text("org_code", input.org_code, 18);
    if let Some(code) = &org_code
        && !is_org_code(code)
    {
        p.push(
            "org_code",
            "must be a 9-character organisation code (GB 11714) or an 18-character unified social credit code (GB 32100) with a valid check character",
        );
    }
    let region = p.optional_text("region", input.region, 12);
    if let Some(r) = &region
        && !is_region_code(r)
    {
        p.push("region", "must be an administrative division code of 6 or 12 digits");
    }
    let parent = p.optional_text("parent", input.parent, 63);
    if let (Some(parent), Some(id)) = (&parent, &id)
        && parent == id
    {
        p.push("parent", "a department cannot be its own parent");
    }
    p.finish()?;
    Ok(Department {
        id: id.unwrap_or_default(),
        name: name.unwrap_or_default(),
        org_code,
        region,
        parent,
        created_at: now(),
    })
}

/// Parses role names, requiring at least one and no duplicates.
pub fn roles(p: &mut Problems, field: &str, roles: Vec<String>) -> Vec<Role> {
    if roles.is_empty() {
        p.push(field, "must name at least one role");
    }
    let mut out: Vec<Role> = Vec::new();
    for (i, r) in roles.into_iter().enumerate() {
        match r.parse::<Role>() {
            Ok(role) if !out.contains(&role) => out.push(role),
            Ok(_) => p.push(format!("{field}[{i}]"), "is listed twice"),
            Err(msg) => p.push(format!("{field}[{i}]"), msg),
        }
    }
    out
}

/// Checks the columns of a dataset.
pub fn columns(p: &mut Problems, field: &str, input: Vec<NewColumn>) -> Vec<Column> {
    if input.is_empty() {
        p.push(field, "must list at least one column");
    }
    if input.len() > 1000 {
        p.push(field, "must list at most 1000 columns");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(input.len());
    for (i, c) in input.into_iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        let name = p.required(&f("name"), c.name);
        if let Some(n) = &name {
            if !is_identifier(n) {
                p.push(f("name"), "must be a lowercase SQL identifier matching [a-z][a-z0-9_]{0,62}");
            } else if !seen.insert(n.clone()) {
                p.push(f("name"), format!("column '{n}' is listed twice"));
            }
        }
        let column_type = p.required(&f("type"), c.column_type).and_then(|t| match t.parse::<ColumnType>() {
            Ok(t) => Some(t),
            Err(msg) => {
                p.push(f("type"), format!("unknown column type '{t}': {msg}"));
                None
            }
        });
        let title = p.optional_text(&f("title"), c.title, 200);
        let sensitivity = match c.sensitivity {
            None => Some(Sensitivity::Internal),
            s => p.parse::<Sensitivity>(&f("sensitivity"), s),
        };
        let semantic = p.optional_text(&f("semantic"), c.semantic, 63);
        if let Some(s) = &semantic
            && !is_identifier(s)
        {
            p.push(f("semantic"), "must be a lowercase identifier such as id_card, credit_code, phone, person_name");
        }
        let description = p.optional_text(&f("description"), c.description, 2000);
        if let (Some(name), Some(column_type), Some(sensitivity)) = (name, column_type, sensitivity) {
            out.push(Column {
                name,
                column_type,
                nullable: c.nullable.unwrap_or(true),
                title,
                sensitivity,
                semantic,
                description,
            });
        }
    }
    out
}

fn related(p: &mut Problems, input: Option<Vec<String>>) -> Vec<String> {
    let list = input.unwrap_or_default();
    for (i, code) in list.iter().enumerate() {
        if !is_resource_code(code) {
            p.push(format!("related[{i}]"), "must be a resource code such as 1-01-001-0001");
        }
    }
    list
}

fn date(p: &mut Problems, field: &str, value: Option<String>) -> Option<NaiveDate> {
    let v = value?;
    match NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            p.push(field, "must be a date YYYY-MM-DD");
            None
        }
    }
}

fn resource_code(p: &mut Problems, value: Option<String>, required: bool) -> Option<String> {
    let v = if required { p.text("resource_code", value, 64) } else { p.optional_text("resource_code", value, 64) };
    if let Some(code) = &v
        && !is_resource_code(code)
    {
        p.push("resource_code", "must be segments of letters and digits joined by '-' or '/', e.g. 1-01-001-0001");
    }
    v
}

fn sharing_rule(p: &mut Problems, sharing: Option<SharingType>, condition: &Option<String>) {
    if sharing == Some(SharingType::Conditional) && condition.is_none() {
        p.push("sharing_condition", "is required when sharing is conditional");
    }
}

fn primary_key(p: &mut Problems, input: Vec<String>, columns: &[Column]) -> Vec<String> {
    if input.is_empty() {
        p.push("primary_key", "must name at least one column");
    }
    let mut seen = HashSet::new();
    for (i, k) in input.iter().enumerate() {
        match columns.iter().find(|c| &c.name == k) {
            None => p.push(format!("primary_key[{i}]"), format!("names no column: '{k}'")),
            Some(c) if c.nullable => p.push(
                format!("primary_key[{i}]"),
                format!("column '{k}' is nullable; primary-key columns must be declared \"nullable\": false"),
            ),
            Some(_) => {}
        }
        if !seen.insert(k) {
            p.push(format!("primary_key[{i}]"), format!("'{k}' is listed twice"));
        }
    }
    input
}

/// Checks a new dataset, given today's date (the default publication date).
pub fn dataset(input: NewDataset, today: NaiveDate) -> Result<Dataset> {
    let mut p = Problems::default();
    let department = p.required("department", input.department);
    if let Some(d) = &department {
        check_name(&mut p, "department", d);
    }
    let name = p.required("name", input.name);
    if let Some(n) = &name {
        check_name(&mut p, "name", n);
    }
    let title = p.text("title", input.title, 200);
    let resource_code = resource_code(&mut p, input.resource_code, true);
    let classification = p.required("classification", input.classification);
    let classification = p.parse::<Classification>("classification", classification);
    let category = p.optional_text("category", input.category, 100);
    let description = p.optional_text("description", input.description, 4000);
    let format = p.optional_text("format", input.format, 50).unwrap_or_else(|| "table".into());
    let sharing = p.required("sharing", input.sharing);
    let sharing = p.parse::<SharingType>("sharing", sharing);
    let sharing_condition = p.optional_text("sharing_condition", input.sharing_condition, 2000);
    sharing_rule(&mut p, sharing, &sharing_condition);
    let update_cycle = p.required("update_cycle", input.update_cycle);
    let update_cycle = p.parse::<UpdateCycle>("update_cycle", update_cycle);
    let published_on = date(&mut p, "published_on", input.published_on).unwrap_or(today);
    let related = related(&mut p, input.related);
    let cols = p.required("columns", input.columns).map(|c| columns(&mut p, "columns", c));
    let pk = p.required("primary_key", input.primary_key);
    let pk = match (pk, &cols) {
        (Some(pk), Some(cols)) => primary_key(&mut p, pk, cols),
        _ => Vec::new(),
    };
    p.finish()?;
    let (Some(department), Some(name), Some(title), Some(resource_code)) = (department, name, title, resource_code)
    else {
        return Err(Error::invalid("dataset", "incomplete"));
    };
    let (Some(classification), Some(sharing), Some(update_cycle), Some(columns)) =
        (classification, sharing, update_cycle, cols)
    else {
        return Err(Error::invalid("dataset", "incomplete"));
    };
    let at = now();
    Ok(Dataset {
        id: format!("{department}.{name}"),
        department,
        name,
        title,
        resource_code,
        classification,
        category,
        description,
        format,
        sharing,
        sharing_condition,
        open: input.open.unwrap_or(false),
        update_cycle,
        published_on,
        related,
        columns,
        primary_key: pk,
        status: DatasetStatus::Active,
        current_version: None,
        row_count: 0,
        created_by: None,
        created_at: at,
        updated_at: at,
    })
}

/// Applies a metadata edit to `current`, returning the edited dataset.
pub fn dataset_patch(current: &Dataset, patch: DatasetPatch) -> Result<Dataset> {
    let mut p = Problems::default();
    let mut d = current.clone();
    if let Some(t) = patch.title {
        match p.optional_text("title", Some(t), 200) {
            Some(t) => d.title = t,
            None => p.push("title", "must not be blank"),
        }
    }
    if patch.resource_code.is_some()
        && let Some(code) = resource_code(&mut p, patch.resource_code, true)
    {
        d.resource_code = code;
    }
    if let Some(c) = p.parse::<Classification>("classification", patch.classification) {
        d.classification = c;
    }
    if patch.category.is_some() {
        d.category = p.optional_text("category", patch.category, 100);
    }
    if patch.description.is_some() {
        d.description = p.optional_text("description", patch.description, 4000);
    }
    if patch.format.is_some() {
        d.format = p.optional_text("format", patch.format, 50).unwrap_or_else(|| "table".into());
    }
    if let Some(s) = p.parse::<SharingType>("sharing", patch.sharing) {
        d.sharing = s;
    }
    if patch.sharing_condition.is_some() {
        d.sharing_condition = p.optional_text("sharing_condition", patch.sharing_condition, 2000);
    }
    sharing_rule(&mut p, Some(d.sharing), &d.sharing_condition);
    if let Some(o) = patch.open {
        d.open = o;
    }
    if let Some(u) = p.parse::<UpdateCycle>("update_cycle", patch.update_cycle) {
        d.update_cycle = u;
    }
    if patch.published_on.is_some()
        && let Some(day) = date(&mut p, "published_on", patch.published_on)
    {
        d.published_on = day;
    }
    if patch.related.is_some() {
        d.related = related(&mut p, patch.related);
    }
    if let Some(s) = p.parse::<DatasetStatus>("status", patch.status) {
        d.status = s;
    }
    if let Some(input) = patch.columns {
        let new = columns(&mut p, "columns", input);
        for (i, old) in current.columns.iter().enumerate() {
            match new.get(i) {
                Some(c) if c.name == old.name && c.column_type == old.column_type && c.nullable == old.nullable => {}
                Some(c) if c.name == old.name => p.push(
                    format!("columns[{i}]"),
                    format!("column '{}' must keep its type {} and nullability", old.name, old.column_type),
                ),
                _ => p.push(
                    format!("columns[{i}]"),
                    format!("existing column '{}' must stay, in its place; columns can only be added", old.name),
                ),
            }
        }
        for (i, c) in new.iter().enumerate().skip(current.columns.len()) {
            if !c.nullable {
                p.push(format!("columns[{i}].nullable"), "an added column must be nullable");
            }
        }
        d.columns = new;
    }
    p.finish()?;
    d.updated_at = now();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("gongan"));
        assert!(is_identifier("a_1"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("Gongan"));
        assert!(!is_identifier(""));
        assert!(!is_identifier(&"a".repeat(64)));
        let mut p = Problems::default();
        assert!(!check_name(&mut p, "id", "gdx"));
        assert!(p.finish().is_err());
    }

    #[test]
    fn codes() {
        // A credit code built with the GB 32100 check symbol.
        let body = b"91441400MA4UXXXX1";
        let check = credit_code_check(body).expect("alphabet");
        let code = format!("{}{}", std::str::from_utf8(body).expect("ascii"), check as char);
        assert!(is_credit_code(&code));
        assert!(is_org_code(&code));
        let mut wrong = code.clone().into_bytes();
        wrong[17] = if wrong[17] == b'0' { b'1' } else { b'0' };
        assert!(!is_credit_code(std::str::from_utf8(&wrong).expect("ascii")));
        // GB 11714 example: D2143569-? with the published check character 2... computed here.
        let c = gb11714_check(b"D2143569").expect("valid");
        assert!(is_org_code(&format!("D2143569{}", c as char)));
        assert!(is_region_code("441403"));
        assert!(!is_region_code("44140"));
        assert!(is_resource_code("1-01-001-0001"));
        assert!(!is_resource_code("1--2"));
    }

    #[test]
    fn column_types() {
        assert_eq!("decimal(12,2)".parse::<ColumnType>(), Ok(ColumnType::Decimal { precision: 12, scale: 2 }));
        assert!("decimal(40,2)".parse::<ColumnType>().is_err());
        assert!("varchar".parse::<ColumnType>().is_err());
        assert_eq!(ColumnType::Decimal { precision: 12, scale: 2 }.to_string(), "decimal(12,2)");
    }

    fn new_dataset() -> NewDataset {
        serde_json::from_value(serde_json::json!({
            "department": "gongan", "name": "population", "title": "户籍人口基础信息",
            "resource_code": "1-01-001-0001", "classification": "basic", "sharing": "unconditional",
            "update_cycle": "daily", "primary_key": ["id_number"],
            "columns": [{"name": "id_number", "type": "string", "nullable": false, "sensitivity": "personal"}]
        }))
        .expect("valid json")
    }

    #[test]
    fn dataset_errors_name_fields() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
        assert!(dataset(new_dataset(), today).is_ok());
        let mut bad = new_dataset();
        bad.primary_key = Some(vec!["nope".into()]);
        bad.sharing = Some("conditional".into());
        bad.columns.as_mut().expect("cols")[0].column_type = Some("varchar".into());
        let Err(Error::Validation { errors }) = dataset(bad, today) else { panic!("must fail") };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"primary_key[0]"), "{fields:?}");
        assert!(fields.contains(&"sharing_condition"), "{fields:?}");
        assert!(fields.contains(&"columns[0].type"), "{fields:?}");
    }

    #[test]
    fn patch_only_adds_nullable_columns() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
        let d = dataset(new_dataset(), today).expect("valid");
        let col = |name: &str, nullable: bool| NewColumn {
            name: Some(name.into()),
            column_type: Some("string".into()),
            nullable: Some(nullable),
            ..Default::default()
        };
        let ok = DatasetPatch { columns: Some(vec![col("id_number", false), col("name", true)]), ..Default::default() };
        assert_eq!(dataset_patch(&d, ok).expect("ok").columns.len(), 2);
        let not_null =
            DatasetPatch { columns: Some(vec![col("id_number", false), col("name", false)]), ..Default::default() };
        assert!(dataset_patch(&d, not_null).is_err());
        let dropped = DatasetPatch { columns: Some(vec![col("name", true)]), ..Default::default() };
        assert!(dataset_patch(&d, dropped).is_err());
    }
}
