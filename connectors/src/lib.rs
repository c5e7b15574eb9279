//! gdx-connectors: how data gets into GDX.
//!
//! This crate will hold the streaming decoders (CSV, NDJSON, Parquet, Arrow
//! IPC) that turn a byte stream into Arrow record batches validated against a
//! dataset's catalogue schema ([`gdx_catalog::Dataset::arrow_schema`]). It
//! never decides access. Nothing is implemented here yet: ingest is the next
//! piece of work.

pub use gdx_catalog::Dataset;
