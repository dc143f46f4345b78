//! One module per `fanout` verb, each owning its arguments (`Args`) and its `run`; `main.rs`
//! only parses the command line and hands it to [`Command::run`].

pub mod args;
pub mod attach;
pub mod bench;
pub mod build;
pub mod cancel;
pub mod demo;
pub mod deploy;
pub mod invoke;
pub mod local;
pub mod new;
pub mod prune;
pub mod redrive;
pub mod register;
pub mod runs;
pub mod status;

/// The verbs, in the order `fanout --help` lists them.
#[derive(clap::Subcommand)]
pub enum Command {
    Demo(demo::Args),
    Local(local::Args),
    Register(register::Args),
    New(new::Args),
    Build(build::Args),
    Deploy(deploy::Args),
    Prune(prune::Args),
    Bench(bench::Args),
    Invoke(invoke::Args),
    Attach(attach::Args),
    Status(status::Args),
    Cancel(cancel::Args),
    Runs(runs::Args),
    Redrive(redrive::Args),
}

impl Command {
    /// Runs the verb; `Ok` carries its exit code (see [`crate::exit`]).
    pub async fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Demo(args) => demo::run(args).await,
            Command::Local(args) => local::run(args).await,
            Command::Register(args) => register::run(args).await,
            Command::New(args) => new::run(args),
            Command::Build(args) => build::run(args),
            Command::Deploy(args) => deploy::run(args).await,
            Command::Prune(args) => prune::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Invoke(args) => invoke::run(args).await,
            Command::Attach(args) => attach::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Cancel(args) => cancel::run(args).await,
            Command::Runs(args) => runs::run(args).await,
            Command::Redrive(args) => redrive::run(args).await,
        }
    }
}
