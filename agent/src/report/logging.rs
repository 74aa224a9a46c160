//! Logging, set up in one place: under systemd (JOURNAL_STREAM set) events
//! go to the journal with structured fields through systemd-journal-logger;
//! anywhere else, readable text on stderr. `RUST_LOG` filters either way.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let journal = journal.with_syslog_identifier("natron-agent".into());
            if journal.install().is_ok() {
                // tracing forwards to `log` when no subscriber is set (its
                // "log" feature); the journal logger takes it from there.
                log::set_max_level(level_of(&filter));
                return;
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn level_of(filter: &str) -> log::LevelFilter {
    match filter
        .rsplit(',')
        .next()
        .unwrap_or("info")
        .rsplit('=')
        .next()
    {
        Some("trace") => log::LevelFilter::Trace,
        Some("debug") => log::LevelFilter::Debug,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        Some("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    }
}
