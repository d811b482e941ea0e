//! Job kinds by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::job::Job;
use crate::kinds;

/// The kinds a worker serves. Workers of one pool should register the same kinds.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn Job>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// `exec`, `noop`, `sleep` and `fail`.
    pub fn with_stock_kinds() -> Self {
        Self::new()
            .register("exec", kinds::Exec::default())
            .register("noop", kinds::Noop)
            .register("sleep", kinds::Sleep)
            .register("fail", kinds::Fail)
    }

    /// Adds (or replaces) a kind.
    pub fn register(mut self, kind: impl Into<String>, job: impl Job) -> Self {
        self.kinds.insert(kind.into(), Arc::new(job));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Job>> {
        self.kinds.get(kind).cloned()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    /// `validate` names the stock kinds from proto's list: it must be what a stock worker runs.
    #[test]
    fn the_stock_kinds_are_the_ones_proto_lists() {
        let registry = super::Registry::with_stock_kinds();
        assert_eq!(registry.kinds().collect::<Vec<_>>(), sluice_proto::spec::STOCK_KINDS);
    }
}
