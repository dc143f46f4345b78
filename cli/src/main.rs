//! `fanout`: parses the command line and hands it to the verb (`fanout::commands`), which owns
//! its arguments and its work.

use clap::{CommandFactory, FromArgMatches, Parser};
use fanout::commands::Command;
use fanout::exit;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "Durable fan-out / fan-in on Restate, with the subtasks on AWS Lambda"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`fanout status … | head`) instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Every verb's --help ends with the one exit-code table.
    let matches = Cli::command()
        .after_help(exit::HELP)
        .mut_subcommands(|verb| verb.after_help(exit::HELP))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(cli.command.run()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// An error no verb reported itself: its message, and the code its kind gives
/// ([`exit::code_of`]: 4 rejected, 5 unreachable, 6 not found, else 1).
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(exit::code_of(error))
}
