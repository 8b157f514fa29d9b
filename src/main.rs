//! liverec: records RTMP pushes into files. See README.md and SPEC.md.

mod api;
mod callback;
mod clock;
mod cluster;
mod config;
mod daemon;
mod db;
mod failpoint;
mod ingest;
mod metrics;
mod model;
mod recording;
mod sink;
mod state;
mod systemd;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "liverec", version, about = "Live-stream recording daemon")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Run {
        /// Config file; without one the embedded defaults apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and explain each error with its line.
    CheckConfig { file: PathBuf },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Version => {
            println!("liverec {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                eprintln!("{}: {} error(s)", file.display(), errors.len());
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let loaded = match config::load(config.as_deref()) {
                Ok(l) => l,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            init_logging(&loaded.config.log);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(loaded.config.runtime.threads())
                .thread_name("liverec")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(daemon::run(loaded, config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(cfg: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: journald and log files get plain text operators can grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}
