//! `natron`: builds and checks natron's NAT topology in an existing VPC.
//! Only the command surface exists so far; each command says so and exits 1.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "natron",
    version,
    about = "Provision and check natron NAT instances in a VPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what `apply` would create or change.
    Plan,
    /// Create or update the NAT topology for a group.
    Apply,
    /// Remove everything the group created.
    Destroy,
    /// Per AZ: the NAT instance, its state and the route tables it serves.
    Status,
    /// Analyse the VPC's configuration for each private subnet.
    Check,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Cmd::Plan => "plan",
        Cmd::Apply => "apply",
        Cmd::Destroy => "destroy",
        Cmd::Status => "status",
        Cmd::Check => "check",
    };
    eprintln!("natron {name}: not implemented yet");
    std::process::ExitCode::FAILURE
}
