//! One module per top-level subcommand.

pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod store;
pub(crate) mod templates;
