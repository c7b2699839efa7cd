//! Every handler config in `examples/templates/` passes the built-ins' checks, as the server
//! runs them when a template is registered.

use std::path::PathBuf;

use tasker_template::TaskTemplate;
use tasker_worker::HandlerRegistry;

#[test]
fn every_example_config_is_accepted() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates");
    let registry = HandlerRegistry::with_builtins();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/templates exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let template = TaskTemplate::from_path(&path)
            .unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
        for step in &template.steps {
            if let Err(problem) = registry.check_config(&step.handler.name, &step.handler.config) {
                panic!(
                    "{}: steps.{}.handler.config.{problem}",
                    path.display(),
                    step.name
                );
            }
            checked += usize::from(registry.contains(&step.handler.name));
        }
    }
    assert!(checked > 0, "no built-in handler steps found");
}
