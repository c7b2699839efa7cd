//! The store conformance suite against SQLite, one temporary database file per test.

mod support;

use support::sqlite_store;
use tasker_store::store_conformance;

store_conformance!(sqlite_store);
