//! `gdx get` and `gdx verify`: record lookups and verification (services,
//! and the provider's stewards).

use serde_json::{Map, Value, json};

use super::{Client, print_object};

/// A key from the command line: `VALUE`, or `col=value,col2=value2` for a composite key.
fn key(text: &str) -> Value {
    if text.contains('=') {
        Value::Object(
            text.split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), Value::String(v.to_string())))
                .collect(),
        )
    } else {
        Value::String(text.to_string())
    }
}

/// `gdx get`: one record by key (several keys: one batch).
pub async fn get(
    client: &Client,
    dataset: &str,
    keys: &[String],
    as_of: Option<i64>,
    as_json: bool,
) -> anyhow::Result<()> {
    let id: String = form_urlencoded::byte_serialize(dataset.as_bytes()).collect();
    let v = client
        .post(
            &format!("/api/v1/datasets/{id}/records:batchGet"),
            &json!({"keys": keys.iter().map(|k| key(k)).collect::<Vec<_>>(), "as_of": as_of}),
        )
        .await?;
    if as_json {
        print_object(&v, true);
        return Ok(());
    }
    for record in v["records"].as_array().into_iter().flatten() {
        print_object(record, false);
    }
    let missing = v["missing"].as_array().map(Vec::len).unwrap_or(0);
    crate::out!(
        "{} found, {missing} not found; version {}",
        v["records"].as_array().map(Vec::len).unwrap_or(0),
        v["version"]
    );
    if missing > 0 && v["records"].as_array().is_none_or(Vec::is_empty) {
        anyhow::bail!("no record with this key");
    }
    Ok(())
}

/// `gdx verify`: whether the record with `key` has these values, without seeing it.
pub async fn verify(client: &Client, dataset: &str, k: &str, fields: &[String], as_json: bool) -> anyhow::Result<bool> {
    let mut map = Map::new();
    for f in fields {
        let (name, value) = f.split_once('=').ok_or_else(|| anyhow::anyhow!("a field is column=value, not {f:?}"))?;
        map.insert(name.trim().to_string(), Value::String(value.to_string()));
    }
    let id: String = form_urlencoded::byte_serialize(dataset.as_bytes()).collect();
    let v =
        client.post(&format!("/api/v1/datasets/{id}/records:verify"), &json!({"key": key(k), "fields": map})).await?;
    let all = v["found"].as_bool() == Some(true)
        && v["matches"].as_object().is_some_and(|m| m.values().all(|b| b.as_bool() == Some(true)));
    if as_json {
        print_object(&v, true);
    } else if v["found"].as_bool() != Some(true) {
        crate::out!("no record with this key");
    } else {
        for (name, ok) in v["matches"].as_object().into_iter().flatten() {
            crate::out!("{name}: {}", if ok.as_bool() == Some(true) { "matches" } else { "does not match" });
        }
    }
    Ok(all)
}
