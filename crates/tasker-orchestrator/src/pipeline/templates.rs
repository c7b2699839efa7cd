//! Templates as task creation needs them: read from the store once, parsed, their step specs
//! built and their context schema compiled, then kept for the life of the process.
//!
//! A registered version never changes (registering other content under it is refused), so a
//! request naming its version is served from memory for good. A request for the latest version
//! trusts its answer for [`LATEST_FOR`]: a version registered meanwhile, by this process or
//! another, is used from then on. Held behind a `std` lock, never across an `.await`: a miss
//! reads the store unlocked, and two requests missing together both read it, harmlessly.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tasker_store::{Store, StoreError, TemplateGetParams};
use tasker_template::{ContextValidator, TaskTemplate};
use tasker_types::StepSpec;

/// How long "the latest version of a template" is answered from memory.
pub const LATEST_FOR: Duration = Duration::from_secs(1);

/// Most template versions kept; past it the cache starts over (a process serves a handful).
const MOST: usize = 1024;

/// A template version ready to create tasks from.
#[derive(Debug)]
pub struct ResolvedTemplate {
    /// Id of the registered version.
    pub id: i64,
    /// `namespace/name@version`.
    pub label: String,
    /// The steps of each new task.
    pub steps: Vec<StepSpec>,
    /// Its context schema, compiled.
    pub context: ContextValidator,
}

/// Why a template could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The store answered: no such template (version); `id` names what was asked for.
    #[error("unknown template {0}")]
    Unknown(String),
    /// The stored template no longer decodes or compiles.
    #[error("stored template {0} is unreadable: {1}")]
    Unreadable(String, String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

/// `(namespace, name, version)`.
type Exact = (String, String, String);
/// The latest version of `(namespace, name)`, and when the store said so.
type Latest = HashMap<(String, String), (Instant, Arc<ResolvedTemplate>)>;

/// Process-wide template cache; see the module docs.
#[derive(Debug, Default)]
pub struct TemplateCache {
    exact: RwLock<HashMap<Exact, Arc<ResolvedTemplate>>>,
    latest: RwLock<Latest>,
}

impl TemplateCache {
    /// The template `namespace/name` at `version`, or its latest version when `None`.
    ///
    /// # Errors
    ///
    /// [`ResolveError`] as above.
    pub async fn resolve(
        &self,
        store: &dyn Store,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ResolvedTemplate>, ResolveError> {
        if let Some(found) = self.cached(namespace, name, version) {
            return Ok(found);
        }
        let record = store
            .template_get(&TemplateGetParams {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                version: version.map(str::to_owned),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound { id, .. } => ResolveError::Unknown(id),
                e => ResolveError::Store(e),
            })?;
        let label = format!("{}/{}@{}", record.namespace, record.name, record.version);
        let template: TaskTemplate = serde_json::from_value(record.definition)
            .map_err(|e| ResolveError::Unreadable(label.clone(), e.to_string()))?;
        let context = template
            .context_validator()
            .map_err(|e| ResolveError::Unreadable(label.clone(), e.problems_lines().join("; ")))?;
        let resolved = Arc::new(ResolvedTemplate {
            id: record.id,
            label,
            steps: template.step_specs(),
            context,
        });
        self.keep(
            (record.namespace, record.name, record.version),
            version.is_none(),
            &resolved,
        );
        Ok(resolved)
    }

    fn cached(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Option<Arc<ResolvedTemplate>> {
        match version {
            Some(version) => {
                let exact = self.exact.read().unwrap_or_else(|p| p.into_inner());
                exact
                    .get(&(namespace.to_owned(), name.to_owned(), version.to_owned()))
                    .cloned()
            }
            None => {
                let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
                latest
                    .get(&(namespace.to_owned(), name.to_owned()))
                    .filter(|(at, _)| at.elapsed() < LATEST_FOR)
                    .map(|(_, found)| Arc::clone(found))
            }
        }
    }

    fn keep(&self, key: Exact, as_latest: bool, resolved: &Arc<ResolvedTemplate>) {
        if as_latest {
            let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
            if latest.len() >= MOST {
                latest.clear();
            }
            latest.insert(
                (key.0.clone(), key.1.clone()),
                (Instant::now(), Arc::clone(resolved)),
            );
        }
        let mut exact = self.exact.write().unwrap_or_else(|p| p.into_inner());
        if exact.len() >= MOST {
            exact.clear();
        }
        exact.insert(key, Arc::clone(resolved));
    }
}

#[cfg(test)]
mod tests {
    use tasker_store::TemplateRegisterParams;
    use tasker_store_sqlite::SqliteStoreOptions;

    use super::*;

    fn version(v: &str, required: &str) -> TaskTemplate {
        TaskTemplate::from_yaml_str(
            &format!(
                "namespace: demo\nname: cached\nversion: {v}\n\
                 context_schema: {{type: object, required: [{required}]}}\n\
                 steps:\n- {{name: only, handler: noop}}\n"
            ),
            "test",
        )
        .unwrap()
    }

    async fn register(store: &dyn Store, template: &TaskTemplate) -> i64 {
        store
            .template_register(&TemplateRegisterParams {
                template: template.to_definition(),
            })
            .await
            .unwrap()
            .id
    }

    #[tokio::test]
    async fn versions_are_kept_and_the_latest_is_asked_again_after_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStoreOptions::new(dir.path().join("t.db"))
            .open()
            .await
            .unwrap();
        let cache = TemplateCache::default();
        let first = register(&store, &version("1.0.0", "a")).await;

        let latest = cache.resolve(&store, "demo", "cached", None).await.unwrap();
        assert_eq!(
            (latest.id, latest.label.as_str()),
            (first, "demo/cached@1.0.0")
        );
        assert_eq!(latest.steps.len(), 1);
        assert!(latest
            .context
            .validate(&serde_json::json!({"a": 1}))
            .is_ok());
        assert!(latest.context.validate(&serde_json::json!({})).is_err());

        let second = register(&store, &version("2.0.0", "b")).await;
        let again = cache.resolve(&store, "demo", "cached", None).await.unwrap();
        assert_eq!(again.id, first, "the latest is trusted within its bound");
        tokio::time::sleep(LATEST_FOR + Duration::from_millis(50)).await;
        let newer = cache.resolve(&store, "demo", "cached", None).await.unwrap();
        assert_eq!(newer.id, second, "then asked again");

        // An exact version is answered from memory, even were the store gone.
        store.close().await;
        let exact = cache
            .resolve(&store, "demo", "cached", Some("1.0.0"))
            .await
            .unwrap();
        assert_eq!(exact.id, first);
        let unknown = cache
            .resolve(&store, "demo", "cached", Some("9.0.0"))
            .await
            .unwrap_err();
        assert!(matches!(unknown, ResolveError::Store(_)), "{unknown:?}");
    }

    #[tokio::test]
    async fn an_unknown_template_says_what_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStoreOptions::new(dir.path().join("t.db"))
            .open()
            .await
            .unwrap();
        let missing = TemplateCache::default()
            .resolve(&store, "demo", "nothing", Some("1.0.0"))
            .await
            .unwrap_err();
        match missing {
            ResolveError::Unknown(what) => assert!(what.contains("nothing"), "{what}"),
            other => panic!("{other:?}"),
        }
    }
}
