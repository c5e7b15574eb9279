//! gdx-connectors: how data gets into GDX.
//!
//! Streaming decoders that turn an upload (CSV in UTF-8, GBK or GB 18030,
//! NDJSON, Parquet, Arrow IPC stream) into Arrow record batches checked
//! against a dataset's catalogue schema: types (with the date forms people
//! type), nullability, primary-key uniqueness within the upload, and checks
//! by semantic type (resident ID numbers, credit codes, mobile numbers).
//! Valid rows are staged in a local Arrow IPC file for the lake to commit;
//! problems are reported by row and column. This crate never decides access.

pub mod convert;
mod csv;
pub mod error;
pub mod format;
pub mod keys;
pub mod parse;
pub mod stage;
pub mod transcode;

pub use error::{Error, Result};
pub use format::{Charset, Format};
pub use stage::{Input, ROW_COLUMN, RowError, RowSink, StageOptions, Staged, stage, stage_to, staging_schema};
