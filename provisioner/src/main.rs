//! `natron`: builds, checks and removes natron's NAT topology in an
//! existing VPC. The binary edge: arguments, AWS configuration, printing,
//! exit codes. Exit codes: 0 done (or all checks pass), 1 failed (or a check
//! found an error), 2 bad input (nothing was changed), 3 check found only
//! warnings.

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use natron::apply::{Event, RunError, Runner, Wait};
use natron::check::Level;
use natron::cloud::{Aws, Cloud, CloudError, ImageChoice};
use natron::layout::{self, PrivateRequest, Request};
use natron::{check, cost, plan, status};

#[derive(Parser)]
#[command(
    name = "natron",
    version,
    about = "Provision and check natron NAT instances in a VPC"
)]
struct Cli {
    /// AWS region (default: the standard AWS configuration chain).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Named profile from the AWS configuration files.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Output format of `status` and `check`.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what `apply` would create or change; changes nothing.
    Plan(Topology),
    /// Create or update the group's NATs, then wait until they serve
    /// every private subnet.
    Apply {
        #[command(flatten)]
        topology: Topology,
        /// Do not wait for the NATs to claim their routes (subnets already
        /// in use are then associated by a later `apply`).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the NATs.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
    },
    /// Remove everything tagged with the group, in dependency order.
    Destroy(Group),
    /// Per AZ: the NAT instance, its state, the route tables it serves.
    Status(Group),
    /// Analyse the configuration of each private subnet of the group.
    Check {
        #[command(flatten)]
        group: Group,
        /// Also check this subnet (repeatable).
        #[arg(long = "subnet")]
        subnets: Vec<String>,
    },
    /// natron's disk images (AMIs).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Monthly price of natron against NAT gateways for the same AZs.
    Cost {
        /// Traffic through the NATs, GB a month.
        #[arg(long)]
        gb_per_month: f64,
        #[arg(long, default_value_t = 2)]
        azs: u32,
        #[arg(long, default_value = layout::DEFAULT_INSTANCE_TYPE)]
        instance_type: String,
        /// Root volume of each NAT, GiB.
        #[arg(long, default_value_t = 4)]
        root_gib: u32,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Upload a raw image (`cargo xtask image`) to an EBS snapshot with the
    /// EBS direct API and register it as an AMI.
    Publish {
        /// The raw disk image.
        #[arg(long)]
        raw: std::path::PathBuf,
        /// AMI name, for example natron-0.1.0-x86_64.
        #[arg(long)]
        name: String,
        /// x86_64 or arm64.
        #[arg(long)]
        arch: natron::publish::Arch,
        /// Also copy the AMI to these regions (comma-separated).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Let every AWS account launch it.
        #[arg(long)]
        public: bool,
    },
}

#[derive(Args)]
struct Group {
    /// The VPC, for example vpc-0abc….
    #[arg(long)]
    vpc: String,
    /// Name of the group (tag natron:group); 1-32 of a-z 0-9 -.
    #[arg(long)]
    group: String,
}

#[derive(Args)]
struct Topology {
    #[command(flatten)]
    group: Group,
    /// AZ to run a NAT in (repeatable; default: every AZ with a public subnet).
    #[arg(long = "az")]
    azs: Vec<String>,
    /// Private subnet to serve: an id, or AZ=CIDR to create (repeatable).
    #[arg(long = "private", required = true)]
    private: Vec<PrivateRequest>,
    /// Public subnet for the NAT of its AZ (repeatable; default: per AZ the
    /// first subnet whose route table goes to an internet gateway).
    #[arg(long = "public-subnet")]
    public_subnets: Vec<String>,
    #[arg(long, default_value = layout::DEFAULT_INSTANCE_TYPE)]
    instance_type: String,
    /// AMI id; without it, the newest image named --ami-name.
    #[arg(long)]
    ami: Option<String>,
    #[arg(long, default_value = "natron-*")]
    ami_name: String,
    /// Owner of --ami-name images: self, amazon or an account id.
    #[arg(long, default_value = "self")]
    ami_owner: String,
    /// Give each AZ's NAT an Elastic IP (a stable egress address).
    #[arg(long)]
    elastic_ip: bool,
}

/// An error that changed nothing: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if e.is::<BadInput>() => {
            eprintln!("natron: {e:#}");
            eprintln!("natron: nothing was changed");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("natron: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sdk_config(cli: &Cli) -> anyhow::Result<(aws_config::SdkConfig, String)> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &cli.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &cli.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let config = loader.load().await;
    let region = config
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| BadInput("no AWS region: give --region or set AWS_REGION".into()))?;
    Ok((config, region))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Cmd::Cost {
        gb_per_month,
        azs,
        instance_type,
        root_gib,
    } = &cli.command
    {
        let e = cost::estimate(
            &cost::Prices::bundled(),
            &cost::Layout {
                azs: *azs,
                instance_type: instance_type.clone(),
                root_gib: *root_gib,
                gb_per_month: *gb_per_month,
            },
        )
        .map_err(BadInput)?;
        match cli.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
            Output::Text => print!("{e}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (config, region) = sdk_config(&cli).await?;
    let cloud = Aws::new(&config);
    match &cli.command {
        Cmd::Plan(t) => {
            let (_, p) = prepare(&cloud, t, &region).await?;
            print_plan(&p);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply {
            topology,
            no_wait,
            wait_timeout,
        } => apply(&cloud, topology, &region, *no_wait, *wait_timeout).await,
        Cmd::Destroy(g) => destroy(&cloud, g).await,
        Cmd::Status(g) => {
            let inv = inventory(&cloud, g).await?;
            let s = status::status(&inv, &g.group);
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Text => print!("{s}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { group, subnets } => {
            let inv = inventory(&cloud, group).await?;
            let findings = check::check(&inv, &group.group, subnets);
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
                Output::Text => {
                    for f in &findings {
                        let level = match f.level {
                            Level::Ok => "ok",
                            Level::Warning => "WARNING",
                            Level::Error => "ERROR",
                        };
                        println!("{level:<7} {}: {}", f.subnet, f.message);
                        if !f.fix.is_empty() {
                            println!("        fix: {}", f.fix);
                        }
                    }
                }
            }
            Ok(match findings.iter().map(|f| f.level).max() {
                Some(Level::Error) => ExitCode::FAILURE,
                Some(Level::Warning) => ExitCode::from(3),
                _ => ExitCode::SUCCESS,
            })
        }
        Cmd::Cost { .. } => unreachable!("handled above"),
        Cmd::Image(ImageCmd::Publish {
            raw,
            name,
            arch,
            regions,
            public,
        }) => {
            if !raw.is_file() {
                return Err(BadInput(format!("--raw {}: no such file", raw.display())).into());
            }
            let opts = natron::publish::Options {
                raw,
                name,
                arch: *arch,
                regions: regions.clone(),
                public: *public,
            };
            let published =
                natron::publish::publish(&config, &opts, &mut |line| println!("{line}")).await?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&published)?),
                Output::Text => println!(
                    "published {} ({}): snapshot {}, {} of {} blocks uploaded",
                    published.image_id,
                    published.register.name,
                    published.snapshot_id,
                    published.blocks_uploaded,
                    published.blocks_total
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn inventory(cloud: &Aws, g: &Group) -> anyhow::Result<natron::model::Inventory> {
    layout::validate_group(&g.group).map_err(BadInput)?;
    cloud
        .inventory(&g.vpc, &g.group)
        .await
        .map_err(|e| input_if_missing(e, &g.vpc))
}

/// An unknown VPC or image is bad input; other API errors are failures.
fn input_if_missing(e: CloudError, what: &str) -> anyhow::Error {
    if e.is_not_found() {
        BadInput(format!("{what}: {e}")).into()
    } else {
        e.into()
    }
}

/// Reads the VPC, checks the request and plans; changes nothing.
async fn prepare(
    cloud: &Aws,
    t: &Topology,
    region: &str,
) -> anyhow::Result<(natron::layout::Layout, plan::Plan)> {
    let inv = inventory(cloud, &t.group).await?;
    let architectures = cloud.instance_architectures(&t.instance_type).await?;
    let choice = match &t.ami {
        Some(id) => ImageChoice::Id(id.clone()),
        None => ImageChoice::Newest {
            name: t.ami_name.clone(),
            owner: t.ami_owner.clone(),
            architectures: architectures.clone(),
        },
    };
    let image = cloud
        .find_image(&choice)
        .await
        .map_err(|e| input_if_missing(e, "image"))?;
    let request = Request {
        vpc_id: t.group.vpc.clone(),
        group: t.group.group.clone(),
        azs: t.azs.clone(),
        private: t.private.clone(),
        public_subnets: t.public_subnets.clone(),
        instance_type: t.instance_type.clone(),
        elastic_ips: t.elastic_ip,
    };
    let layout = layout::resolve(&request, &inv, image, &architectures)
        .map_err(|errors| BadInput(errors.join("\n")))?;
    let p = plan::plan(&layout, &inv, region, natron_contract::AGENT_PORT)
        .map_err(|c| BadInput(c.to_string()))?;
    println!(
        "group {} in {}: image {} ({}), {}",
        layout.group, layout.vpc_id, layout.image.id, layout.image.name, layout.instance_type
    );
    for z in &layout.zones {
        let private: Vec<String> = z.private.iter().map(|p| p.key()).collect();
        println!(
            "  {}: NAT in {}, serving {}",
            z.az,
            z.public_subnet,
            private.join(", ")
        );
    }
    Ok((layout, p))
}

fn print_plan(p: &plan::Plan) {
    if p.actions.is_empty() {
        println!("nothing to change");
    } else {
        println!("plan: {} actions", p.actions.len());
        for (i, a) in p.actions.iter().enumerate() {
            println!("  {:>2}. {a}", i + 1);
        }
    }
    for n in &p.notes {
        println!("note: {n}");
    }
}

fn printer() -> impl FnMut(Event) -> ControlFlow<()> {
    |e| {
        match e {
            Event::Start {
                index: 0, action, ..
            } => println!("  ... {action}"),
            Event::Start {
                index,
                total,
                action,
            } => println!("  [{index}/{total}] {action}"),
            Event::Created { what, id } => println!("        {what}: {id}"),
            Event::Progress(line) => println!("  {line}"),
        }
        ControlFlow::Continue(())
    }
}

async fn apply(
    cloud: &Aws,
    t: &Topology,
    region: &str,
    no_wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (layout, p) = prepare(cloud, t, region).await?;
    print_plan(&p);
    let mut runner = Runner::new(cloud, &layout.vpc_id, &layout.group);
    let mut on = printer();
    let outcome = runner.run(&p, &mut on).await?;
    if no_wait {
        for a in &outcome.pending {
            println!("  not yet (--no-wait): {a}");
        }
        if !outcome.pending.is_empty() {
            println!("run `natron apply` again once the NATs serve their route tables");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "waiting (up to {}) for each route table to be served by the NAT of its AZ",
        humantime::format_duration(timeout)
    );
    let wait = Wait {
        timeout,
        poll: Duration::from_secs(2),
    };
    match runner.wait(outcome.pending, &wait, &mut on).await {
        Ok(()) => {
            println!(
                "done: every private subnet of {} is served by the NAT of its AZ",
                layout.group
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ RunError::Timeout { .. }) => {
            eprintln!("natron: {e}");
            eprintln!("natron: everything else is in place; `natron apply` again carries on");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

async fn destroy(cloud: &Aws, g: &Group) -> anyhow::Result<ExitCode> {
    let inv = inventory(cloud, g).await?;
    let p = plan::destroy(&inv, &g.group);
    print_plan(&p);
    let mut runner = Runner::new(cloud, &g.vpc, &g.group);
    runner
        .run(&p, &mut printer())
        .await
        .context("destroy stopped; `natron destroy` again carries on")?;
    let left = plan::destroy(&inventory(cloud, g).await?, &g.group);
    if !left.actions.is_empty() {
        anyhow::bail!(
            "still tagged with the group after destroy: {}; `natron destroy` again carries on",
            left.actions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!(
        "done: nothing tagged {}={} is left in {}",
        natron::model::GROUP_TAG,
        g.group,
        g.vpc
    );
    Ok(ExitCode::SUCCESS)
}
