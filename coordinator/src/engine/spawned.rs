//! The children an attempt spawned, checked and kept compact while they are read: a
//! spawn of 100,000 children is held as names and shared definitions, never as 100,000
//! full child specs at once.

use std::sync::Arc;

use sluice_proto::spawn::{CHILDREN_MAX, SpawnError};
use sluice_proto::{ChildSpec, JobSpec};

/// Children ready to become records, or why they cannot.
#[derive(Clone, Debug, Default)]
pub struct Spawned {
    /// Each child's name and definition, in spawn order; consecutive equal definitions
    /// share one allocation (children that differ only in name, as fan-outs often do).
    pub(super) children: Vec<(String, Arc<JobSpec>)>,
    /// How many children were read (also those dropped once a problem was found).
    pub(super) read: usize,
    pub(super) problem: Option<SpawnError>,
}

impl Spawned {
    /// How many children were read so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// Checks and keeps one batch, in the order the batches were written.
    pub fn add_batch(&mut self, batch: Vec<ChildSpec>) {
        self.read += batch.len();
        if self.problem.is_some() {
            return;
        }
        if self.read > CHILDREN_MAX {
            self.fail(SpawnError::TooMany(self.read));
            return;
        }
        self.children.reserve(batch.len());
        for child in batch {
            let problems = child.problems();
            if !problems.is_empty() {
                self.fail(SpawnError::Invalid { name: child.name.chars().take(64).collect(), problems });
                return;
            }
            let ChildSpec { name, .. } = &child;
            let name = name.clone();
            let spec = child.into_job_spec();
            let definition = match self.children.last() {
                Some((_, previous)) if **previous == spec => previous.clone(),
                _ => Arc::new(spec),
            };
            self.children.push((name, definition));
        }
    }

    /// All batches are in: the first name used twice (in spawn order) is a problem too.
    pub fn finish(mut self) -> Self {
        if self.problem.is_none()
            && let Some(name) = first_duplicate(&self.children)
        {
            self.fail(SpawnError::Duplicate(name));
        }
        self
    }

    /// One batch's worth, checked (tests and small spawns).
    pub fn from_children(children: Vec<ChildSpec>) -> Self {
        let mut spawned = Self::default();
        spawned.add_batch(children);
        spawned.finish()
    }

    fn fail(&mut self, problem: SpawnError) {
        self.problem = Some(problem);
        self.children = Vec::new();
    }
}

/// The name whose second use comes first, without copying names into a set.
fn first_duplicate(children: &[(String, Arc<JobSpec>)]) -> Option<String> {
    let mut order: Vec<(&str, usize)> =
        children.iter().enumerate().map(|(index, (name, _))| (name.as_str(), index)).collect();
    order.sort_unstable();
    order
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0)
        .map(|pair| pair[1])
        .min_by_key(|(_, index)| *index)
        .map(|(name, _)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(names: &[&str]) -> Vec<ChildSpec> {
        names.iter().map(|name| ChildSpec::new(*name, "noop")).collect()
    }

    #[test]
    fn batches_keep_order_and_share_equal_definitions() {
        let mut spawned = Spawned::default();
        spawned.add_batch(batch(&["a", "b"]));
        spawned.add_batch(batch(&["c"]));
        let spawned = spawned.finish();
        assert!(spawned.problem.is_none());
        let names: Vec<&str> = spawned.children.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(Arc::ptr_eq(&spawned.children[0].1, &spawned.children[2].1), "one definition for equal children");
    }

    #[test]
    fn the_first_name_used_twice_across_batches_is_named() {
        let mut spawned = Spawned::default();
        spawned.add_batch(batch(&["a", "b", "c"]));
        spawned.add_batch(batch(&["b", "a"]));
        let spawned = spawned.finish();
        assert_eq!(spawned.problem, Some(SpawnError::Duplicate("b".into())));
        assert!(spawned.children.is_empty(), "nothing of a refused spawn is kept");
        assert_eq!(spawned.read(), 5);
    }

    #[test]
    fn an_invalid_child_or_too_many_children_refuse_the_spawn() {
        let mut bad = batch(&["ok"]);
        bad.push(ChildSpec::new("no spaces", "noop"));
        let spawned = Spawned::from_children(bad);
        assert!(matches!(&spawned.problem, Some(SpawnError::Invalid { name, .. }) if name == "no spaces"));
        let mut spawned = Spawned::default();
        spawned.add_batch(vec![ChildSpec::new("a", "noop"); CHILDREN_MAX]);
        spawned.add_batch(batch(&["one-more"]));
        assert_eq!(spawned.finish().problem, Some(SpawnError::TooMany(CHILDREN_MAX + 1)));
    }
}
