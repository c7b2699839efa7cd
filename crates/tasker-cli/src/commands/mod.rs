//! One module per top-level subcommand.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod store;
pub(crate) mod tasks;
pub(crate) mod templates;
