//! Mapping errors to one line on stderr and an exit code.

use std::process::ExitCode;

use gradguard::GuardError;

/// Bad input that is not a library error: a file that cannot be read, a flag combination.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::error::Error for BadInput {}

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Exit code for bad input.
pub const BAD_INPUT: u8 = 2;
/// Exit code for non-finite gradients under the `error` policy.
pub const NON_FINITE: u8 = 3;
/// Exit code for a run that failed.
pub const FAILED: u8 = 1;

/// The exit code an error maps to.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if let Some(g) = e.downcast_ref::<GuardError>() {
        return match g {
            GuardError::NonFiniteGradient { .. }
            | GuardError::NonFiniteLoss { .. }
            | GuardError::NonFiniteParameter { .. } => NON_FINITE,
            g if g.is_bad_input() => BAD_INPUT,
            _ => FAILED,
        };
    }
    if e.downcast_ref::<BadInput>().is_some() {
        return BAD_INPUT;
    }
    FAILED
}

/// Prints the error chain on one line and returns its exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    let line: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    eprintln!("error: {}", line.join(": ").replace('\n', " "));
    ExitCode::from(code_of(e))
}

/// clap's own errors: help and version print as usual; anything else becomes one line, code 2.
pub fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap's first paragraph, folded onto one line; usage and tips follow a blank line.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("error: {first} (see --help)");
            ExitCode::from(BAD_INPUT)
        }
    }
}
