//! `tasker templates …`: validate template files.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use tasker_template::TaskTemplate;

/// `tasker templates` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TemplatesCommand {
    /// Parse and validate template files; exits 0 only when every file is valid.
    Validate {
        /// Template files (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print one JSON object per file instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(cmd: TemplatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplatesCommand::Validate { files, json } => Ok(validate(&files, json)),
    }
}

fn validate(files: &[PathBuf], json: bool) -> ExitCode {
    let mut all_valid = true;
    for file in files {
        let shown = file.display().to_string();
        match TaskTemplate::from_path(file) {
            Ok(t) if json => println!(
                "{}",
                serde_json::json!({"file": shown, "ok": true, "template": t.key(), "steps": t.steps.len()})
            ),
            Ok(t) => println!("ok: {shown} ({}, {} steps)", t.key(), t.steps.len()),
            Err(err) => {
                all_valid = false;
                let lines = err.problems_lines();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "ok": false, "errors": lines})
                    );
                } else {
                    for line in lines {
                        println!("error: {line}");
                    }
                }
            }
        }
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
