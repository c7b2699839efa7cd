//! `tasker templates …`: validate template files.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use tasker_template::TaskTemplate;

use super::client::{block_on, Client, ServerArgs};

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
    /// Validate template files, then register them with the server.
    Register {
        /// Template files (YAML).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the templates registered with the server.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn run(cmd: TemplatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplatesCommand::Validate { files, json } => Ok(validate(&files, json)),
        TemplatesCommand::Register { files, server } => register(&files, &server),
        TemplatesCommand::List { server } => list(&server),
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

fn register(files: &[PathBuf], server: &ServerArgs) -> anyhow::Result<ExitCode> {
    // Validate everything locally first, so nothing is registered from a bad batch.
    if validate(files, false) != ExitCode::SUCCESS {
        return Ok(ExitCode::FAILURE);
    }
    let client = Client::new(server);
    for file in files {
        let text = std::fs::read_to_string(file)?;
        let key = block_on(client.post_yaml("/v1/templates", text))?;
        if server.json {
            println!("{key}");
        } else {
            println!(
                "registered: {}/{}@{}",
                key["namespace"].as_str().unwrap_or("?"),
                key["name"].as_str().unwrap_or("?"),
                key["version"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(server: &ServerArgs) -> anyhow::Result<ExitCode> {
    let all = block_on(Client::new(server).get("/v1/templates"))?;
    if server.json {
        println!("{all}");
        return Ok(ExitCode::SUCCESS);
    }
    for t in all["templates"].as_array().into_iter().flatten() {
        let steps = t["definition"]["steps"].as_array().map_or(0, Vec::len);
        println!(
            "{}/{}@{} ({steps} steps)",
            t["namespace"].as_str().unwrap_or("?"),
            t["name"].as_str().unwrap_or("?"),
            t["version"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
