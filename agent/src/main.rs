//! natron-agent's entry point: arguments, configuration, logging, the HTTP
//! server and the control loop. Exit codes: 0 stopped cleanly, 1 runtime
//! failure (e.g. the HTTP port is taken), 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use natron_agent::agent::{Agent, Edges, Options};
use natron_agent::config::{self, Config};
use natron_agent::ec2::{AwsEc2, Ec2};
use natron_agent::{http, imds, kernel, logging, nft, notify, state};
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
        println!("{}: configuration is valid", cli.config.display());
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
    match runtime.block_on(run(config, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads the configuration from IMDS user data, waiting up to 30 s for
/// IMDS at boot. Err: the exit code (2 invalid, 1 IMDS unreachable) and why.
async fn config_from_user_data() -> Result<Config, (u8, String)> {
    use natron_agent::identity::Metadata;
    let imds = imds::Imds::new();
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

async fn run(config: Config, cli: Cli) -> anyhow::Result<()> {
    let shared = Arc::new(state::Shared::new());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen {}: cannot bind: {e}", config.http.listen))?;
    info!(listen = %config.http.listen, version = env!("CARGO_PKG_VERSION"), "natron-agent starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(http::serve(listener, shared.clone(), http_stop));
    tokio::spawn(watchdog(shared.clone()));

    let attempts = config.ec2.max_attempts;
    let requests = shared.metrics.ec2_requests.clone();
    let endpoint = config.ec2.endpoint_url.clone();
    let agent = Agent {
        config,
        options: Options {
            skip_source_dest_check: cli.test_skip_source_dest_check,
        },
        shared,
        edges: Edges {
            metadata: Arc::new(imds::Imds::new()),
            nft: Arc::new(nft::NftCli::default()),
            sysctl: Arc::new(kernel::ProcSys::default()),
            ec2: Box::new(move |identity| {
                let region = identity.region.clone();
                let endpoint = endpoint.clone();
                let requests = requests.clone();
                Box::pin(async move {
                    Arc::new(AwsEc2::new(&region, attempts, endpoint.as_deref(), requests).await)
                        as Arc<dyn Ec2>
                })
            }),
        },
    };
    agent.run(shutdown_signal()).await;
    info!("stopping; the data plane stays in place");
    let _ = stop_tx.send(true);
    server.await??;
    Ok(())
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

/// Pings systemd's watchdog while the control loop keeps making passes; a
/// stuck loop stops the pings and systemd restarts the agent.
async fn watchdog(shared: Arc<state::Shared>) {
    let Some(timeout) = notify::watchdog_timeout() else {
        return;
    };
    let mut tick = tokio::time::interval(timeout / 4);
    loop {
        tick.tick().await;
        let age = shared
            .last_pass
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(timeout);
        if age < timeout / 2 {
            notify::watchdog();
        }
    }
}
