//! End-to-end tests against the real server on loopback, in one test binary
//! (each binary links the whole engine, so they are few).

mod access;
mod attack;
mod audit;
mod foundation;
mod ingest;
mod limits;
mod push;
mod query;
mod records;
mod sharing;
mod slt;
mod tls;
