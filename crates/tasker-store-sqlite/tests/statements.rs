//! Statement counting against SQLite, in a binary of its own: the count is per process.

mod support;

tasker_store::statements_conformance!(support::sqlite_store);
