//! natron-agent's entry point: arguments, configuration, logging, the
//! runtime, then `run::Agent`. Exit codes: 0 stopped cleanly, 1 runtime
//! failure (the HTTP port is taken, a supervised task died), 2 bad
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use natron_agent::core::config::{self, Config};
use natron_agent::core::settings::Settings;
use natron_agent::edge::imds::{Imds, Metadata};
use natron_agent::report::logging;
use natron_agent::report::status::Shared;
use natron_agent::run::supervisor::InjectedPanic;
use natron_agent::run::{Agent, Edges, Exit, Options};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "natron-agent", version, about = "natron NAT instance agent")]
struct Cli {
    /// Configuration file (TOML); every key is optional.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the configuration and exit: 0 when valid, 2 when not.
    #[arg(long)]
    validate: bool,
    /// Tests only: skip disabling the source/dest check (and claim anyway).
    #[arg(long, hide = true)]
    test_skip_source_dest_check: bool,
    /// Tests only: make the named supervised task panic.
    #[arg(long, hide = true)]
    test_panic_task: Option<String>,
    /// Tests only: after this many seconds.
    #[arg(long, hide = true, default_value_t = 5)]
    test_panic_after_secs: u64,
    /// Where the agent remembers its egress verdict across its own restarts
    /// (systemd's RuntimeDirectory: kept across restarts, not reboots).
    #[arg(long, default_value = "/run/natron")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Ask the running agent to hand this NAT's route tables to its peers
    /// now and drain (the image runs this when the instance shuts down); a
    /// plain stop or restart of the agent moves nothing.
    Handoff,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No file at the default path: the configuration is in the user data.
    let from_user_data = !cli.validate
        && cli.config == std::path::Path::new(config::DEFAULT_PATH)
        && !cli.config.exists();
    let config = if from_user_data {
        None
    } else {
        match Config::load(&cli.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("natron-agent: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        }
    };
    if cli.validate {
        let source = if from_user_data || !cli.config.exists() {
            "no configuration file (the configuration is the instance's user data, or all defaults)"
                .to_string()
        } else {
            format!("{}: configuration is valid", cli.config.display())
        };
        println!("{source}");
        return ExitCode::SUCCESS;
    }
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = match config {
        Some(c) => c,
        None => match runtime.block_on(config_from_user_data()) {
            Ok(c) => c,
            Err((code, message)) => {
                error!("{message}");
                return ExitCode::from(code);
            }
        },
    };
    if let Some(Command::Handoff) = cli.command {
        return runtime.block_on(handoff(&config));
    }
    match runtime.block_on(run(config, cli)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads the configuration from IMDS user data, waiting up to 30 s for
/// IMDS at boot. Err: the exit code (2 invalid, 1 IMDS unreachable) and why.
async fn config_from_user_data() -> Result<Settings, (u8, String)> {
    let imds = Imds::new();
    let mut attempts = 0;
    let user_data = loop {
        match imds.get("user-data").await {
            Ok(v) => break v,
            Err(e) if attempts < 30 => {
                attempts += 1;
                tracing::debug!(error = %e, "user data not readable yet");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err((
                    1,
                    format!("no {} and no user data: {e}", config::DEFAULT_PATH),
                ))
            }
        }
    };
    info!(
        present = user_data.is_some(),
        "no {}: configuration from the instance's user data",
        config::DEFAULT_PATH
    );
    Config::from_user_data(user_data.as_deref())
        .map_err(|e| (2, format!("invalid configuration: {e}")))
}

async fn run(settings: Settings, cli: Cli) -> anyhow::Result<ExitCode> {
    let shared = Arc::new(Shared::new());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen {}: cannot bind: {e}", settings.listen))?;
    info!(listen = %settings.listen, version = env!("CARGO_PKG_VERSION"), "natron-agent starting");
    let inject_panic = cli.test_panic_task.map(|task| InjectedPanic {
        task,
        after: Duration::from_secs(cli.test_panic_after_secs),
    });
    let agent = Agent {
        edges: Edges::real(&settings, &shared, &cli.state_dir),
        settings,
        options: Options {
            skip_source_dest_check: cli.test_skip_source_dest_check,
            inject_panic,
            state_dir: Some(cli.state_dir),
        },
        shared,
    };
    Ok(match agent.run(listener, shutdown_signal()).await {
        Exit::Stopped => {
            info!("stopped; the data plane stays in place");
            ExitCode::SUCCESS
        }
        Exit::TaskFailed(_) => ExitCode::from(1),
    })
}

/// `natron-agent handoff`: asks the running agent (on this instance's
/// loopback) to hand its route tables over, and waits until it has.
async fn handoff(settings: &Settings) -> ExitCode {
    use natron_contract::client::{post, GetError};
    let port = settings.listen.port();
    let wait = settings.failover.handoff_timeout + Duration::from_secs(10);
    match post("127.0.0.1", port, "/handoff", wait).await {
        Ok((200, answer)) => {
            println!("{}", answer.trim());
            ExitCode::SUCCESS
        }
        Ok((code, answer)) => {
            eprintln!("natron-agent handoff: HTTP {code}: {}", answer.trim());
            ExitCode::from(1)
        }
        Err(GetError::Refused) => {
            println!("natron-agent is not running on port {port}: nothing to hand over");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natron-agent handoff: 127.0.0.1:{port}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
