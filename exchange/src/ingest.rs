//! The lake side of the server: catching the catalogue up with the Delta
//! log at start, and turning commits into catalogue versions.

use gdx_catalog::lake::records::RecordIndex;
use gdx_catalog::lake::{Committed, Lake};
use gdx_catalog::{Catalog, DatasetQuery, PageRequest, Version};

use crate::error::Result;

/// The catalogue's record of a committed push.
pub fn version_of(c: &Committed) -> Version {
    Version {
        version: c.info.version,
        mode: c.info.mode.as_str().to_string(),
        row_count: c.row_count,
        rows_written: c.info.rows_written,
        bytes: c.bytes,
        committed_at: c.committed_at,
        committed_by: Some(c.info.committed_by.clone()),
        rejected: c.info.rejected,
        delta_version: Some(c.delta_version as i64),
        idempotency_key: c.info.idempotency_key.clone(),
    }
}

/// Every dataset of the catalogue, page by page.
pub(crate) async fn all_datasets(catalog: &Catalog) -> Result<Vec<gdx_catalog::Dataset>> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(PageRequest::MAX_LIMIT);
    loop {
        let datasets = catalog.store().search_datasets(DatasetQuery::default(), page.clone()).await?;
        out.extend(datasets.items);
        match datasets.next_page_token {
            Some(t) => page.token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Records every push the Delta log holds and the catalogue does not (a
/// server stopped between the commit and the catalogue write). Idempotent.
pub async fn catch_up(catalog: &Catalog, lake: &Lake) -> Result<usize> {
    let mut recovered = 0;
    for d in &all_datasets(catalog).await? {
        if !lake.table_path(d).join("_delta_log").is_dir() {
            continue;
        }
        let known = catalog.store().last_delta_version(&d.id).await?.map(|v| v as u64);
        let commits = match lake.commits_after(d, known).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(dataset = %d.id, error = %e, "cannot read the Delta log; the catalogue may lag behind it");
                continue;
            }
        };
        for c in commits {
            if catalog.store().record_version(&d.id, version_of(&c)).await? {
                tracing::warn!(dataset = %d.id, version = c.info.version, delta_version = c.delta_version, "recovered a version from the Delta log");
                recovered += 1;
            }
        }
    }
    Ok(recovered)
}

/// Compacts and vacuums every dataset's table once, each under its write lock.
pub async fn maintain_all(
    catalog: &Catalog,
    lake: &Lake,
    records: &RecordIndex,
    retention: std::time::Duration,
) -> Result<()> {
    for d in &all_datasets(catalog).await? {
        let lock = lake.write_lock(&d.id);
        let _guard = lock.lock().await;
        match lake.maintain(d, true, Some(retention)).await {
            Ok(m) if m != Default::default() => {
                records.sweep(lake, d);
                tracing::info!(dataset = %d.id, compacted = m.files_compacted, written = m.files_written, deleted = m.files_deleted, "lake maintenance")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(dataset = %d.id, error = %e, "lake maintenance failed"),
        }
    }
    Ok(())
}

/// Runs [`maintain_all`] every `interval`, from one interval after start.
pub fn schedule_maintenance(
    catalog: Catalog,
    lake: std::sync::Arc<Lake>,
    records: std::sync::Arc<RecordIndex>,
    interval: std::time::Duration,
    retention: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = maintain_all(&catalog, &lake, &records, retention).await {
                tracing::error!(error = %e, "lake maintenance run failed");
            }
        }
    })
}

/// Loads the record index of every dataset that has a primary key and a
/// version (building any sidecar that is missing), in the background after a
/// start, so that the first lookups do not wait for it: at 10 M rows that is
/// about a second. No more datasets than the index keeps versions of
/// ([`RecordIndex::KEPT_VERSIONS`]); a failure is logged, and the lookup that
/// needs the index tries again.
pub fn warm_record_index(
    catalog: Catalog,
    lake: std::sync::Arc<Lake>,
    records: std::sync::Arc<RecordIndex>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let datasets = match all_datasets(&catalog).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "record index not warmed: the catalogue cannot be listed");
                return;
            }
        };
        let (mut loaded, mut rows) = (0usize, 0usize);
        let keyed = datasets.iter().filter(|d| !d.primary_key.is_empty()).filter_map(|d| Some((d, d.current_version?)));
        for (d, current) in keyed.take(RecordIndex::KEPT_VERSIONS) {
            let delta = match catalog.store().version(&d.id, current).await {
                Ok(v) => v.delta_version,
                Err(e) => {
                    tracing::warn!(dataset = %d.id, error = %e, "record index not warmed");
                    continue;
                }
            };
            let Some(delta) = delta.and_then(|v| u64::try_from(v).ok()) else { continue };
            match records.snapshot(&lake, d, delta).await {
                Ok(s) => {
                    loaded += 1;
                    rows += s.rows();
                    tracing::debug!(dataset = %d.id, rows = s.rows(), "record index loaded");
                }
                Err(e) => tracing::warn!(dataset = %d.id, error = %e, "record index not warmed"),
            }
        }
        if loaded > 0 {
            tracing::info!(datasets = loaded, rows, ms = started.elapsed().as_millis() as u64, "record index loaded");
        }
    })
}

/// Removes what interrupted uploads left in the temporary folder.
pub fn clean_tmp(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}
