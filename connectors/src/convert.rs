//! Conversion of decoded columns into the dataset's typed columns, with
//! every problem recorded against its row and column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray, StringArray, StringBuilder, new_null_array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimestampMicrosecondType,
};
use gdx_catalog::{Column, ColumnType};

use crate::error::Result;
use crate::parse;

/// One decoded column, before conversion.
#[derive(Debug, Clone)]
pub enum Raw {
    /// Text (CSV, NDJSON, or a string column of a typed format).
    Strings(StringArray),
    /// A typed column of Parquet or Arrow input.
    Typed(ArrayRef),
    /// The upload has no such column.
    Missing,
}

/// A problem with one cell (or one row, when `column` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellError {
    /// Index of the row within the batch.
    pub index: usize,
    /// The dataset column concerned.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The converted columns of one batch and the problems found.
#[derive(Debug)]
pub struct Converted {
    /// Typed columns in the dataset's order; a cell with a problem is null.
    pub columns: Vec<ArrayRef>,
    /// Problems, by row and column.
    pub errors: Vec<CellError>,
}

fn is_blank(s: &str) -> bool {
    // Most values start with a visible ASCII character: no need to trim.
    !s.as_bytes().first().is_some_and(|b| b.is_ascii_graphic()) && s.trim().is_empty()
}

fn primitive<P: ArrowPrimitiveType>(
    a: &StringArray,
    ci: usize,
    errors: &mut Vec<CellError>,
    parse: impl Fn(&str) -> Result<P::Native, String>,
) -> PrimitiveArray<P> {
    a.iter()
        .enumerate()
        .map(|(index, v)| match v {
            Some(s) if !is_blank(s) => {
                parse(s).map_err(|message| errors.push(CellError { index, column: Some(ci), message })).ok()
            }
            _ => None,
        })
        .collect()
}

/// A column checked by its semantic type. Values are usually stored as given:
/// the array is then shared, not copied; only a batch with a normalised
/// (upper-cased, trimmed), blank or invalid value is rebuilt.
fn semantic_strings(col: &Column, ci: usize, a: &StringArray, errors: &mut Vec<CellError>) -> ArrayRef {
    let semantic = col.semantic.as_deref();
    let mut changed: Vec<(usize, Option<String>)> = Vec::new();
    for (index, v) in a.iter().enumerate() {
        match v {
            Some(s) if !is_blank(s) => match parse::semantic(semantic, s) {
                Ok(None) => {}
                Ok(Some(norm)) => changed.push((index, Some(norm))),
                Err(message) => {
                    errors.push(CellError { index, column: Some(ci), message });
                    changed.push((index, None));
                }
            },
            Some(_) => changed.push((index, None)),
            None => {}
        }
    }
    if changed.is_empty() {
        return Arc::new(a.clone());
    }
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    let mut next = changed.into_iter().peekable();
    for (index, v) in a.iter().enumerate() {
        match next.next_if(|(i, _)| *i == index) {
            Some((_, replaced)) => b.append_option(replaced),
            None => b.append_option(v),
        }
    }
    Arc::new(b.finish())
}

fn from_strings(col: &Column, ci: usize, a: &StringArray, errors: &mut Vec<CellError>) -> Result<ArrayRef> {
    Ok(match col.column_type {
        ColumnType::String => match col.semantic.as_deref() {
            Some("id_card" | "credit_code" | "phone") => semantic_strings(col, ci, a, errors),
            _ => Arc::new(a.clone()),
        },
        ColumnType::Int64 => Arc::new(primitive::<Int64Type>(a, ci, errors, parse::int64)),
        ColumnType::Float64 => Arc::new(primitive::<Float64Type>(a, ci, errors, parse::float64)),
        ColumnType::Date => Arc::new(primitive::<Date32Type>(a, ci, errors, parse::date)),
        ColumnType::Timestamp => {
            Arc::new(primitive::<TimestampMicrosecondType>(a, ci, errors, parse::timestamp).with_timezone("UTC"))
        }
        ColumnType::Decimal { precision, scale } => Arc::new(
            primitive::<Decimal128Type>(a, ci, errors, |s| parse::decimal(s, precision, scale))
                .with_precision_and_scale(precision, scale)?,
        ),
        ColumnType::Boolean => Arc::new(
            a.iter()
                .enumerate()
                .map(|(index, v)| match v {
                    Some(s) if !is_blank(s) => parse::boolean(s)
                        .map_err(|message| errors.push(CellError { index, column: Some(ci), message }))
                        .ok(),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
    })
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn from_typed(col: &Column, ci: usize, a: &ArrayRef, errors: &mut Vec<CellError>) -> Result<ArrayRef> {
    let target = col.column_type.arrow_type();
    if is_text(a.data_type()) || (col.column_type == ColumnType::String && col.semantic.is_some()) {
        let text = cast_with_options(a, &DataType::Utf8, &CastOptions::default())?;
        return from_strings(col, ci, text.as_string::<i32>(), errors);
    }
    let safe = CastOptions { safe: true, ..Default::default() };
    let out = match cast_with_options(a, &target, &safe) {
        Ok(out) => out,
        Err(_) => {
            for index in (0..a.len()).filter(|i| a.is_valid(*i)) {
                errors.push(CellError {
                    index,
                    column: Some(ci),
                    message: format!("a {} value cannot be stored as {}", a.data_type(), col.column_type),
                });
            }
            return Ok(new_null_array(&target, a.len()));
        }
    };
    for index in (0..a.len()).filter(|i| a.is_valid(*i) && out.is_null(*i)) {
        errors.push(CellError {
            index,
            column: Some(ci),
            message: format!("the value does not fit {}", col.column_type),
        });
    }
    Ok(out)
}

/// Converts the raw columns of a batch of `rows` rows into the dataset's types.
pub fn convert(columns: &[Column], raw: &[Raw], rows: usize) -> Result<Converted> {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(columns.len());
    for (ci, (col, r)) in columns.iter().zip(raw).enumerate() {
        let before = errors.len();
        let array = match r {
            Raw::Strings(a) => from_strings(col, ci, a, &mut errors)?,
            Raw::Typed(a) => from_typed(col, ci, a, &mut errors)?,
            Raw::Missing => new_null_array(&col.column_type.arrow_type(), rows),
        };
        if !col.nullable && array.null_count() > 0 {
            let flagged: std::collections::HashSet<usize> = errors[before..].iter().map(|e| e.index).collect();
            for index in (0..rows).filter(|i| array.is_null(*i) && !flagged.contains(i)) {
                errors.push(CellError { index, column: Some(ci), message: "is required".into() });
            }
        }
        out.push(array);
    }
    Ok(Converted { columns: out, errors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdx_catalog::Sensitivity;

    fn col(name: &str, t: ColumnType, nullable: bool, semantic: Option<&str>) -> Column {
        Column {
            name: name.into(),
            column_type: t,
            nullable,
            title: None,
            sensitivity: Sensitivity::Internal,
            semantic: semantic.map(str::to_string),
            description: None,
        }
    }

    #[test]
    fn strings_become_types_and_problems_name_row_and_column() {
        let cols = [
            col("id", ColumnType::String, false, Some("id_card")),
            col("born", ColumnType::Date, true, None),
            col("pay", ColumnType::Decimal { precision: 10, scale: 2 }, true, None),
        ];
        let raw = [
            Raw::Strings(StringArray::from(vec![Some("11010519491231002x"), Some("110105194912310021"), None])),
            Raw::Strings(StringArray::from(vec![Some("2024/1/2"), Some("nope"), Some("")])),
            Raw::Strings(StringArray::from(vec![Some("12.5"), None, Some("1.234")])),
        ];
        let c = convert(&cols, &raw, 3).expect("converts");
        assert_eq!(c.columns[0].as_string::<i32>().value(0), "11010519491231002X");
        let rows: Vec<(usize, Option<usize>)> = c.errors.iter().map(|e| (e.index, e.column)).collect();
        assert!(rows.contains(&(1, Some(0))), "{:?}", c.errors);
        assert!(rows.contains(&(2, Some(0))), "{:?}", c.errors);
        assert!(rows.contains(&(1, Some(1))), "{:?}", c.errors);
        assert!(rows.contains(&(2, Some(2))), "{:?}", c.errors);
        assert_eq!(c.errors.len(), 4, "{:?}", c.errors);
    }

    #[test]
    fn typed_columns_are_cast_and_overflow_is_reported() {
        let cols = [col("n", ColumnType::Int64, true, None), col("missing", ColumnType::String, false, None)];
        let raw = [Raw::Typed(Arc::new(arrow::array::Float64Array::from(vec![1.0, 1e30]))), Raw::Missing];
        let c = convert(&cols, &raw, 2).expect("converts");
        assert_eq!(c.columns[0].as_primitive::<Int64Type>().value(0), 1);
        assert_eq!(c.errors.iter().filter(|e| e.column == Some(0)).count(), 1);
        assert_eq!(c.errors.iter().filter(|e| e.column == Some(1)).count(), 2);
    }
}
