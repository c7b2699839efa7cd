//! The store conformance suite against PostgreSQL, one throw-away database per test.

mod support;

use support::postgres_store;
use tasker_store::store_conformance;

store_conformance!(postgres_store);
