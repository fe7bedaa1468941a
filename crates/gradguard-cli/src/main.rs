//! The `gradguard` command: a thin layer that parses arguments and calls the libraries.
//!
//! Exit codes: 0 success; 1 the run itself failed; 2 bad input (file, flag, config) with a
//! one-line reason; 3 non-finite gradients under the `error` policy.

mod args;
mod clip;
mod demo;
mod demo_lm;
mod exit;
mod files;
mod inspect;
mod lab;
mod lab_args;
mod probe_cmd;
mod report_cmd;
mod reproduce_cmd;
mod sweep_cmd;
mod train_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .init();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return exit::clap_error(e),
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Clip(a) => {
            let sub = matches
                .subcommand_matches("clip")
                .expect("clap parsed the clip subcommand");
            clip::run(&a, &clip::rule_order(sub))
        }
        Command::Train(a) => train_cmd::run(&a),
        Command::Sweep(a) => sweep_cmd::run(&a),
        Command::Report(a) => report_cmd::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Probe(a) => probe_cmd::run(&a),
        Command::Reproduce(a) => reproduce_cmd::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}
