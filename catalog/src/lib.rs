//! gdx-catalog: what exists in GDX.
//!
//! Departments, principals and their tokens, datasets with the metadata of
//! the national catalogue guide (classification, resource code, information
//! items, sharing type, open attribute, update cycle, ...), their versions,
//! and the metadata store that keeps them. This crate never looks at who is
//! asking: authorisation lives in gdx-policies and the HTTP layer.

pub mod catalog;
pub mod error;
pub mod lake;
pub mod model;
pub mod search;
pub mod sqlite;
pub mod store;
pub mod token;
pub mod validate;
pub mod workdays;

pub use catalog::{Catalog, IssuedToken};
pub use error::{Error, FieldError, Result};
pub use model::*;
pub use sqlite::SqliteStore;
pub use store::{MetaStore, StoredPolicy};
