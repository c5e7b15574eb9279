//! A casbin adapter over the metadata store.
//!
//! The shipped default policy (a CSV text like `policies/data_policy.csv`)
//! is loaded first, then the runtime rules the store keeps (grants' `g2`
//! links and any rule added through casbin's management API). Writes go to
//! the store only: the defaults are part of the release, not of the data.

use std::sync::Arc;

use async_trait::async_trait;
use casbin::{Adapter, Filter, Model};
use gdx_catalog::{CasbinRule, MetaStore};

/// casbin's [`Adapter`] over a [`MetaStore`].
pub struct StoreAdapter {
    defaults: Vec<CasbinRule>,
    store: Arc<dyn MetaStore>,
}

impl StoreAdapter {
    /// An adapter loading `defaults` (policy CSV text) then the store's rules.
    pub fn new(defaults: &str, store: Arc<dyn MetaStore>) -> Self {
        Self { defaults: parse_rules(defaults), store }
    }
}

/// The rules of a policy CSV text: one per line, `ptype, v0, v1, ...`;
/// blank lines and `#` comments skipped.
pub fn parse_rules(text: &str) -> Vec<CasbinRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(',').map(|f| f.trim().to_string());
            let ptype = fields.next()?;
            Some(CasbinRule { ptype, values: fields.collect() })
        })
        .collect()
}

fn load(m: &mut dyn Model, rule: CasbinRule) {
    let Some(sec) = rule.ptype.get(..1) else { return };
    let sec = sec.to_string();
    if !m.add_policy(&sec, &rule.ptype, rule.values) {
        tracing::debug!(ptype = %rule.ptype, "casbin rule not loaded: duplicate or not in the model");
    }
}

fn adapter_error(e: gdx_catalog::Error) -> casbin::Error {
    casbin::Error::AdapterError(casbin::error::AdapterError(Box::new(e)))
}

fn rules(ptype: &str, values: Vec<Vec<String>>) -> Vec<CasbinRule> {
    values.into_iter().map(|values| CasbinRule { ptype: ptype.to_string(), values }).collect()
}

#[async_trait]
impl Adapter for StoreAdapter {
    async fn load_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        for rule in self.defaults.iter().cloned() {
            load(m, rule);
        }
        for rule in self.store.casbin_rules().await.map_err(adapter_error)? {
            load(m, rule);
        }
        Ok(())
    }

    async fn load_filtered_policy<'a>(&mut self, m: &mut dyn Model, f: Filter<'a>) -> casbin::Result<()> {
        let stored = self.store.casbin_rules().await.map_err(adapter_error)?;
        for rule in self.defaults.iter().cloned().chain(stored) {
            let filter = if rule.ptype.starts_with('p') { &f.p } else { &f.g };
            let keep = filter
                .iter()
                .enumerate()
                .all(|(i, want)| want.is_empty() || rule.values.get(i).is_some_and(|v| v == want));
            if keep {
                load(m, rule);
            }
        }
        Ok(())
    }

    async fn save_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        let mut out = Vec::new();
        for (sec, asts) in m.get_model() {
            for (ptype, ast) in asts {
                if !matches!(sec.as_str(), "p" | "g") {
                    continue;
                }
                for values in ast.get_policy() {
                    let rule = CasbinRule { ptype: ptype.clone(), values: values.clone() };
                    if !self.defaults.contains(&rule) {
                        out.push(rule);
                    }
                }
            }
        }
        self.store.replace_casbin_rules(out).await.map_err(adapter_error)
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        self.store.replace_casbin_rules(Vec::new()).await.map_err(adapter_error)
    }

    fn is_filtered(&self) -> bool {
        false
    }

    async fn add_policy(&mut self, _sec: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.store.add_casbin_rules(rules(ptype, vec![rule])).await.map_err(adapter_error)
    }

    async fn add_policies(&mut self, _sec: &str, ptype: &str, values: Vec<Vec<String>>) -> casbin::Result<bool> {
        self.store.add_casbin_rules(rules(ptype, values)).await.map_err(adapter_error)
    }

    async fn remove_policy(&mut self, _sec: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.store.remove_casbin_rules(rules(ptype, vec![rule])).await.map_err(adapter_error)
    }

    async fn remove_policies(&mut self, _sec: &str, ptype: &str, values: Vec<Vec<String>>) -> casbin::Result<bool> {
        self.store.remove_casbin_rules(rules(ptype, values)).await.map_err(adapter_error)
    }

    async fn remove_filtered_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        self.store.remove_filtered_casbin_rules(ptype, field_index, field_values).await.map_err(adapter_error)
    }
}
