//! Opening a store from a database URL: the one place that names concrete backends.

use std::sync::Arc;

use anyhow::Context;
use tasker_store::Store;
use tasker_store_postgres::PgStoreOptions;
use tasker_store_sqlite::SqliteStoreOptions;

/// Opens `postgres://…` with the PostgreSQL backend (a pool of `max_connections`) and
/// `sqlite:PATH` with SQLite.
pub(crate) async fn open(url: &str, max_connections: u32) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStoreOptions {
            max_connections,
            ..PgStoreOptions::new(url)
        }
        .connect()
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
        Ok(Arc::new(store))
    } else if url.starts_with("sqlite:") {
        let options = SqliteStoreOptions::from_url(url)?;
        let store = options
            .open()
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(Arc::new(store))
    } else {
        anyhow::bail!("unsupported database url {url:?}: use postgres://… or sqlite:PATH")
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
