//! What the task manager needs from the seed, as a trait, so the REST layer
//! and the task lifecycle can be tested without starting one.
//!
//! The real implementation is [`pollen_agent::seed::Seed`]; [`NoSeed`] does
//! nothing and reports no bytes.

use pollen_agent::seed::{Seed, SeedTask};
use pollen_protocol::{InfoHash, TaskId};

/// The seed, as seen by the task manager.
pub trait SeedPort: Send + Sync + 'static {
    /// Starts serving a task (replacing one with the same info-hash).
    fn add_task(&self, task: SeedTask);
    /// Stops serving task `task_id` and closes its connections, unless the
    /// info-hash is now served for another task, and returns the bytes it
    /// uploaded for the task (`None` if it did not serve it).
    fn remove_task(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64>;
    /// Payload bytes uploaded for task `task_id` so far, while the seed
    /// serves it; `None` once it no longer does.
    fn task_uploaded(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64>;
}

impl SeedPort for Seed {
    fn add_task(&self, task: SeedTask) {
        Seed::add_task(self, task);
    }

    fn remove_task(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64> {
        Seed::remove_task(self, task_id, info_hash)
    }

    fn task_uploaded(&self, task_id: &TaskId, info_hash: &InfoHash) -> Option<u64> {
        Seed::task_uploaded(self, task_id, info_hash)
    }
}

/// A seed that serves nothing: for tests of the REST layer and the lifecycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSeed;

impl SeedPort for NoSeed {
    fn add_task(&self, _task: SeedTask) {}

    fn remove_task(&self, _task_id: &TaskId, _info_hash: &InfoHash) -> Option<u64> {
        None
    }

    fn task_uploaded(&self, _task_id: &TaskId, _info_hash: &InfoHash) -> Option<u64> {
        None
    }
}
