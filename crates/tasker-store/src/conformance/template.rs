use std::sync::Arc;

use crate::{conformance::template, Store, StoreError, TemplateGetParams, TemplateRegisterParams};

fn versioned(version: &str, description: &str) -> TemplateRegisterParams {
    TemplateRegisterParams {
        template: template(&format!(
            "namespace: shop\nname: order\nversion: {version}\ndescription: {description}\n\
             steps:\n- {{name: a, handler: noop}}\n"
        ))
        .to_definition(),
    }
}

fn get(version: Option<&str>) -> TemplateGetParams {
    TemplateGetParams {
        namespace: "shop".into(),
        name: "order".into(),
        version: version.map(str::to_owned),
    }
}

/// Registering versions 1.2.0, 1.10.0 and 1.9.3: `get` without a version returns 1.10.0 (by
/// semantic version, not text or registration order), an exact version returns that one, an
/// unknown one is `NotFound`, and `list` holds all three.
pub async fn template_register_and_get_latest(store: Arc<dyn Store>) {
    for v in ["1.2.0", "1.10.0", "1.9.3"] {
        let rec = store.template_register(&versioned(v, "x")).await.unwrap();
        assert_eq!(rec.version, v);
        assert_eq!(
            (rec.namespace.as_str(), rec.name.as_str()),
            ("shop", "order")
        );
    }
    assert_eq!(
        store.template_get(&get(None)).await.unwrap().version,
        "1.10.0"
    );
    assert_eq!(
        store
            .template_get(&get(Some("1.2.0")))
            .await
            .unwrap()
            .version,
        "1.2.0"
    );
    let missing = store.template_get(&get(Some("2.0.0"))).await.unwrap_err();
    assert!(
        matches!(
            missing,
            StoreError::NotFound {
                entity: "template",
                ..
            }
        ),
        "{missing}"
    );
    let other = TemplateGetParams {
        namespace: "nope".into(),
        ..get(None)
    };
    assert!(matches!(
        store.template_get(&other).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.template_list().await.unwrap().len(), 3);
}

/// The same definition registered twice returns the same record; a different definition under
/// an existing version is a `Conflict`. The stored definition round-trips.
pub async fn template_register_conflict(store: Arc<dyn Store>) {
    let params = versioned("1.0.0", "first");
    let first = store.template_register(&params).await.unwrap();
    let again = store.template_register(&params).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(first.definition, params.template.definition);
    let decoded: tasker_template::TaskTemplate =
        serde_json::from_value(first.definition.clone()).unwrap();
    assert_eq!(decoded.to_definition(), params.template);
    let err = store
        .template_register(&versioned("1.0.0", "changed"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}
