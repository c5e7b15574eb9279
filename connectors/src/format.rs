//! Upload formats, chosen by `Content-Type` (HTTP) or file extension (CLI).

use crate::error::{Error, Result};

/// Text encodings of CSV uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// UTF-8 (a byte-order mark is ignored).
    Utf8,
    /// GBK, as exported by Chinese office software.
    Gbk,
    /// GB 18030, the superset of GBK.
    Gb18030,
}

/// A format GDX decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header row.
    Csv(Charset),
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC stream.
    ArrowStream,
}

impl Format {
    /// The format of a `Content-Type` header value.
    pub fn from_content_type(value: &str) -> Result<Self> {
        let mut parts = value.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut charset = None;
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("charset")
            {
                charset = Some(v.trim().trim_matches('"').to_ascii_lowercase());
            }
        }
        match essence.as_str() {
            "text/csv" | "application/csv" => Ok(Format::Csv(match charset.as_deref() {
                None | Some("utf-8") | Some("utf8") => Charset::Utf8,
                Some("gbk") | Some("gb2312") | Some("cp936") => Charset::Gbk,
                Some("gb18030") => Charset::Gb18030,
                Some(other) => {
                    return Err(Error::Unsupported {
                        message: format!("charset '{other}' (use utf-8, gbk or gb18030)"),
                    });
                }
            })),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
            "application/vnd.apache.parquet" | "application/x-parquet" => Ok(Format::Parquet),
            "application/vnd.apache.arrow.stream" => Ok(Format::ArrowStream),
            "" => Err(Error::Unsupported { message: "no Content-Type".into() }),
            other => Err(Error::Unsupported {
                message: format!(
                    "'{other}' (use text/csv, application/x-ndjson, application/vnd.apache.parquet or application/vnd.apache.arrow.stream)"
                ),
            }),
        }
    }

    /// The `Content-Type` to send for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv(Charset::Utf8) => "text/csv; charset=utf-8",
            Format::Csv(Charset::Gbk) => "text/csv; charset=gbk",
            Format::Csv(Charset::Gb18030) => "text/csv; charset=gb18030",
            Format::Ndjson => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
        }
    }

    /// The format named on the command line (`csv`, `csv-gbk`, `ndjson`, `parquet`, `arrow`), or by a file's extension.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "csv" => Format::Csv(Charset::Utf8),
            "csv-gbk" | "gbk" => Format::Csv(Charset::Gbk),
            "csv-gb18030" | "gb18030" => Format::Csv(Charset::Gb18030),
            "ndjson" | "jsonl" => Format::Ndjson,
            "parquet" => Format::Parquet,
            "arrow" | "arrows" | "ipc" => Format::ArrowStream,
            _ => return None,
        })
    }

    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv(_) => "CSV",
            Format::Ndjson => "NDJSON",
            Format::Parquet => "Parquet",
            Format::ArrowStream => "Arrow IPC",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(Format::from_content_type("text/csv").ok(), Some(Format::Csv(Charset::Utf8)));
        assert_eq!(Format::from_content_type("text/csv; charset=GBK").ok(), Some(Format::Csv(Charset::Gbk)));
        assert_eq!(Format::from_content_type("text/csv;charset=\"gb18030\"").ok(), Some(Format::Csv(Charset::Gb18030)));
        assert!(Format::from_content_type("text/csv; charset=latin1").is_err());
        assert_eq!(Format::from_content_type("application/x-ndjson").ok(), Some(Format::Ndjson));
        assert!(Format::from_content_type("application/json").is_err());
        assert_eq!(Format::from_name("csv-gbk"), Some(Format::Csv(Charset::Gbk)));
    }
}
