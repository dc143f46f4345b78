//! `fanout attach ID`: wait for a fan-out started earlier (`fanout invoke --send`, another
//! client, one that was killed) with the same live progress as `fanout invoke`, and print its
//! result. Also the follow-and-report half of `fanout invoke`.

use crate::commands::args::{RestateArgs, WatchArgs};
use crate::exit;
use crate::observe::{self, Display};
use crate::outcome::{Endpoints, Followed, fail, fail_with, report};
use anyhow::{Context, Result};
use std::time::Instant;

/// Wait for a fan-out started earlier (by id) with live progress, and print its result.
#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's invocation id (inv_…), as `fanout invoke --send` prints it.
    id: String,
    #[command(flatten)]
    watch: WatchArgs,
    #[command(flatten)]
    restate: RestateArgs,
}

/// Ctrl-C (SIGINT), caught from the moment this is created: one pressed right after the run
/// started must still end the wait with a note on how to attach again, not kill the process.
pub struct Interrupt(tokio::signal::unix::Signal);

impl Interrupt {
    pub fn listen() -> Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map(Self)
            .context("cannot listen for Ctrl-C")
    }

    async fn recv(&mut self) {
        self.0.recv().await;
    }
}

/// Waits for invocation `id` while showing its subtasks' progress; Ctrl-C stops waiting (the run
/// itself goes on in Restate).
pub async fn follow(
    endpoints: &Endpoints,
    id: &str,
    display: &mut Display,
    mut interrupt: Interrupt,
) -> Result<Followed> {
    let started = Instant::now();
    let observer = endpoints.observer();
    let wait = async {
        tokio::select! {
            answer = endpoints.attach_patiently(id) => Some(answer),
            _ = interrupt.recv() => None,
        }
    };
    let (answer, progress) = observe::watch(&observer, id, display, wait).await;
    let answer = match answer {
        Some(answer) => Some(answer?),
        None => None,
    };
    Ok(Followed {
        invocation_id: id.to_owned(),
        answer,
        progress,
        elapsed: started.elapsed(),
    })
}

/// `fanout attach ID`.
pub async fn run(args: Args) -> Result<u8> {
    Ok(attach(&args).await)
}

async fn attach(args: &Args) -> u8 {
    let (endpoints, id) = (&args.restate.endpoints(), args.id.as_str());
    let (output, display_mode) = (args.watch.output, args.watch.display());
    if let Err(message) = observe::check_invocation_id(id) {
        return fail(output, exit::BAD_INPUT, "rejected", None, &message);
    }
    match endpoints.observer().coordinator(id).await {
        Err(e) => return fail_with(output, Some(id), &e),
        Ok(None) => {
            let message = format!(
                "Restate at {} does not know {id}: check the id and --admin-url (finished runs \
                 are kept 24 h by default)",
                endpoints.admin.base_url()
            );
            return fail(output, exit::UNKNOWN_ID, "unknown", Some(id), &message);
        }
        Ok(Some(_)) => {}
    }
    let interrupt = match Interrupt::listen() {
        Ok(interrupt) => interrupt,
        Err(e) => return fail_with(output, Some(id), &e),
    };
    let mut display = Display::new(display_mode);
    match follow(endpoints, id, &mut display, interrupt).await {
        Ok(followed) => report(&followed, output, false),
        Err(e) => {
            display.abandon();
            fail_with(output, Some(id), &e)
        }
    }
}
