//! Row filters: scalar predicates a provider sets over its dataset's columns.
//!
//! A filter may use the placeholders `{{department.id}}`,
//! `{{department.region}}` and `{{principal.id}}`, unquoted. They are
//! replaced in the parsed expression, never in the text: each becomes one
//! string literal node holding the reader's attribute (or `NULL` when the
//! reader has none, which matches no row), so no attribute value can change
//! the predicate's shape. A placeholder inside quotes is an error.
//!
//! Only scalar, side-effect-free forms are accepted: the dataset's columns,
//! literals, comparisons, `AND`/`OR`/`NOT`, arithmetic, `IN (...)`,
//! `BETWEEN`, `LIKE`, `IS [NOT] NULL`, `CASE` and `CAST`. Functions,
//! subqueries and anything else are refused when the policy is set.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Ident, UnaryOperator, Value, ValueWithSpan};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Span;

/// The placeholders a filter may use, and the identifier each becomes while parsed.
const PLACEHOLDERS: [(&str, &str); 3] = [
    ("department.id", "__gdx_placeholder_department_id"),
    ("department.region", "__gdx_placeholder_department_region"),
    ("principal.id", "__gdx_placeholder_principal_id"),
];

/// Who reads: the values placeholders take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reader {
    /// `{{department.id}}`.
    pub department_id: Option<String>,
    /// `{{department.region}}`.
    pub department_region: Option<String>,
    /// `{{principal.id}}`.
    pub principal_id: Option<String>,
}

impl Reader {
    fn value(&self, placeholder_ident: &str) -> Option<&str> {
        match placeholder_ident {
            "__gdx_placeholder_department_id" => self.department_id.as_deref(),
            "__gdx_placeholder_department_region" => self.department_region.as_deref(),
            "__gdx_placeholder_principal_id" => self.principal_id.as_deref(),
            _ => None,
        }
    }
}

/// A checked filter, ready to be bound for a reader.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterTemplate {
    expr: Expr,
}

/// Replaces unquoted placeholders by identifiers; refuses quoted and unknown ones.
fn substitute(filter: &str) -> Result<String, String> {
    let mut out = String::with_capacity(filter.len());
    let mut quote: Option<char> = None;
    let mut rest = filter;
    while let Some(c) = rest.chars().next() {
        if quote.is_none() && rest.starts_with("{{") {
            let end = rest.find("}}").ok_or("a placeholder is not closed with }}")?;
            let name = rest[2..end].trim();
            let (_, ident) = PLACEHOLDERS.iter().find(|(p, _)| *p == name).ok_or_else(|| {
                format!(
                    "unknown placeholder {{{{{name}}}}}; one of {}",
                    PLACEHOLDERS.map(|(p, _)| format!("{{{{{p}}}}}")).join(", ")
                )
            })?;
            out.push(' ');
            out.push_str(ident);
            out.push(' ');
            rest = &rest[end + 2..];
            continue;
        }
        if quote.is_some() && rest.starts_with("{{") {
            return Err("a placeholder must not be quoted: it is bound as a typed value, write it bare".into());
        }
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if quote.is_some() {
        return Err("a quoted string is not closed".into());
    }
    Ok(out)
}

/// Checks `filter` against the dataset's `columns`.
pub fn parse(filter: &str, columns: &[String]) -> Result<FilterTemplate, String> {
    let text = substitute(filter)?;
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(&text).map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    let rest = parser.peek_token();
    if rest.token != datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(format!("unexpected {} after the predicate", rest.token));
    }
    check(&expr, columns)?;
    Ok(FilterTemplate { expr })
}

fn check(expr: &Expr, columns: &[String]) -> Result<(), String> {
    let c = |e: &Expr| check(e, columns);
    match expr {
        Expr::Identifier(Ident { value, quote_style, .. }) => {
            let name = if quote_style.is_some() { value.clone() } else { value.to_lowercase() };
            if columns.contains(&name) || PLACEHOLDERS.iter().any(|(_, i)| *i == name) {
                Ok(())
            } else {
                Err(format!("unknown column {value}"))
            }
        }
        Expr::Value(v) => match v.value {
            Value::Placeholder(_) => {
                Err("parameters such as $1 or ? are not allowed; use the {{...}} placeholders".into())
            }
            _ => Ok(()),
        },
        Expr::TypedString(_) => Ok(()),
        Expr::BinaryOp { left, op, right } => {
            use BinaryOperator as B;
            match op {
                B::Eq
                | B::NotEq
                | B::Lt
                | B::LtEq
                | B::Gt
                | B::GtEq
                | B::And
                | B::Or
                | B::Plus
                | B::Minus
                | B::Multiply
                | B::Divide
                | B::Modulo
                | B::StringConcat => {
                    c(left)?;
                    c(right)
                }
                other => Err(format!("operator {other} is not allowed in a row filter")),
            }
        }
        Expr::UnaryOp { op: UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus, expr } => c(expr),
        Expr::Nested(e)
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotTrue(e)
        | Expr::IsNotFalse(e) => c(e),
        Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
            c(a)?;
            c(b)
        }
        Expr::InList { expr, list, .. } => {
            c(expr)?;
            list.iter().try_for_each(c)
        }
        Expr::Between { expr, low, high, .. } => {
            c(expr)?;
            c(low)?;
            c(high)
        }
        Expr::Like { expr, pattern, any: false, .. } | Expr::ILike { expr, pattern, any: false, .. } => {
            c(expr)?;
            c(pattern)
        }
        Expr::Cast { expr, format: None, .. } => c(expr),
        Expr::Case { operand, conditions, else_result, .. } => {
            if let Some(o) = operand {
                c(o)?;
            }
            for w in conditions {
                c(&w.condition)?;
                c(&w.result)?;
            }
            else_result.as_deref().map_or(Ok(()), c)
        }
        Expr::Function(f) => Err(format!("function {} is not allowed in a row filter", f.name)),
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            Err("subqueries are not allowed in a row filter".into())
        }
        other => Err(format!("{other} is not allowed in a row filter")),
    }
}

impl FilterTemplate {
    /// The filter for `reader`: each placeholder becomes one literal node.
    pub fn bind(&self, reader: &Reader) -> Expr {
        let mut expr = self.expr.clone();
        bind(&mut expr, reader);
        expr
    }
}

fn literal(value: Option<&str>) -> Expr {
    let value = value.map_or(Value::Null, |v| Value::SingleQuotedString(v.to_string()));
    Expr::Value(ValueWithSpan { value, span: Span::empty() })
}

fn bind(expr: &mut Expr, reader: &Reader) {
    let b = |e: &mut Expr| bind(e, reader);
    match expr {
        Expr::Identifier(Ident { value, quote_style: None, .. }) if PLACEHOLDERS.iter().any(|(_, i)| i == value) => {
            *expr = literal(reader.value(value));
        }
        Expr::BinaryOp { left, right, .. }
        | Expr::IsDistinctFrom(left, right)
        | Expr::IsNotDistinctFrom(left, right) => {
            b(left);
            b(right);
        }
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::IsNull(expr)
        | Expr::IsNotNull(expr)
        | Expr::IsTrue(expr)
        | Expr::IsFalse(expr)
        | Expr::IsNotTrue(expr)
        | Expr::IsNotFalse(expr)
        | Expr::Cast { expr, .. } => b(expr),
        Expr::InList { expr, list, .. } => {
            b(expr);
            list.iter_mut().for_each(b);
        }
        Expr::Between { expr, low, high, .. } => {
            b(expr);
            b(low);
            b(high);
        }
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
            b(expr);
            b(pattern);
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            if let Some(o) = operand {
                b(o);
            }
            for w in conditions {
                b(&mut w.condition);
                b(&mut w.result);
            }
            if let Some(e) = else_result {
                b(e);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        ["id_number", "county_code", "birth_date", "owner"].map(String::from).to_vec()
    }

    fn county(region: &str) -> Reader {
        Reader {
            department_id: Some("meixian".into()),
            department_region: Some(region.into()),
            principal_id: Some("u_1".into()),
        }
    }

    #[test]
    fn placeholders_become_one_literal_whatever_they_hold() {
        let f = parse("county_code = {{department.region}} OR owner = {{ principal.id }}", &cols()).expect("ok");
        assert_eq!(f.bind(&county("441403")).to_string(), "county_code = '441403' OR owner = 'u_1'");
        // A hostile attribute stays one string literal: the shape does not change.
        let bound = f.bind(&county("x' OR '1'='1"));
        let Expr::BinaryOp { left, op: BinaryOperator::Or, .. } = &bound else { panic!("{bound}") };
        let Expr::BinaryOp { right, .. } = left.as_ref() else { panic!("{left}") };
        assert!(
            matches!(right.as_ref(), Expr::Value(v) if v.value == Value::SingleQuotedString("x' OR '1'='1".into()))
        );
        // No attribute: NULL, which matches no row.
        assert_eq!(f.bind(&Reader::default()).to_string(), "county_code = NULL OR owner = NULL");
    }

    #[test]
    fn refuses_what_is_not_a_plain_scalar_predicate() {
        let bad = [
            ("county_code = '{{department.region}}'", "quoted"),
            ("county_code = {{department.name}}", "unknown placeholder"),
            ("county_code = {{department.region", "not closed"),
            ("nope = 1", "unknown column"),
            ("lower(county_code) = 'a'", "function"),
            ("id_number IN (SELECT id_number FROM gongan.population)", "subqueries"),
            ("EXISTS (SELECT 1)", "subqueries"),
            ("county_code = $1", "parameters"),
            ("county_code = 'a'; DROP TABLE x", "unexpected"),
            ("county_code = 'a", "not closed"),
            ("county_code ~ 'a'", "not allowed"),
        ];
        for (filter, why) in bad {
            let e = parse(filter, &cols()).expect_err(filter);
            assert!(e.contains(why), "{filter}: {e}");
        }
        for ok in [
            "county_code IN ('441402', '441403') AND NOT (birth_date < DATE '1950-01-01')",
            "county_code LIKE '4414%' OR county_code IS NULL",
            "CASE WHEN owner = {{principal.id}} THEN true ELSE county_code BETWEEN '441400' AND '441499' END",
            "CAST(county_code AS BIGINT) > 441400",
            "\"county_code\" = 'x' AND 'it''s' = owner",
        ] {
            assert!(parse(ok, &cols()).is_ok(), "{ok}: {:?}", parse(ok, &cols()));
        }
    }
}
