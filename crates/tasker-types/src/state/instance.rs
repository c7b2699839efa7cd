//! The state an orchestrator instance reports with its heartbeats.

use super::states;

states!(
    /// What a registered orchestrator instance is doing.
    "instance",
    InstanceState {
        /// Claiming and running work.
        Running,
        /// Stopping: claims nothing new, finishes what it holds, then deregisters.
        Draining,
    }
);
