//! `natron`: builds, checks and removes natron's NAT topology in an
//! existing VPC. The binary edge: arguments (`args`), AWS configuration,
//! printing (`output`), exit codes. Exit codes: 0 done (or all checks
//! pass), 1 failed (or a check found an error, or stdout failed), 2 bad
//! input or a refused destroy (nothing was changed), 3 check found only
//! warnings, 130 stopped by Ctrl-C.

mod args;
mod change;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use natron::apply::RunError;
use natron::check::Level;
use natron::cloud::{Aws, Cloud, CloudError, ImageChoice};
use natron::layout::{self, Request};
use natron::report::PlanReport;
use natron::{check, cost, plan, regions, status};

use args::{Cli, Cmd, ExportFormat, Group, ImageCmd, Topology};
use output::Out;

const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// An error that changed nothing: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

/// A run stopped between actions by Ctrl-C: exit 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
struct Interrupted(RunError);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut out = Out::new(cli.output);
    let result = runtime.block_on(run(cli, &mut out));
    let code = match result {
        Ok(code) => code,
        Err(e) if e.is::<BadInput>() => {
            eprintln!("natron: {e:#}");
            eprintln!("natron: nothing was changed");
            ExitCode::from(2)
        }
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("natron: {e:#}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("natron: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(e) = out.take_failure() {
        eprintln!("natron: could not write the output: {e}");
        return ExitCode::FAILURE;
    }
    code
}

/// The AWS configuration and the region's partition; a region that is
/// not an AWS region is bad input before any call.
async fn sdk_config(cli: &Cli) -> anyhow::Result<(aws_config::SdkConfig, &'static str)> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &cli.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &cli.region {
        regions::partition(r).map_err(BadInput)?;
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let config = loader.load().await;
    let region = config
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| BadInput("no AWS region: give --region or set AWS_REGION".into()))?;
    let partition = regions::partition(&region).map_err(BadInput)?;
    Ok((config, partition))
}

async fn run(cli: Cli, out: &mut Out) -> anyhow::Result<ExitCode> {
    if let Cmd::Cost {
        gb_per_month,
        azs,
        instance_type,
        root_gib,
        cloudwatch_metrics,
        addresses,
        alarms,
    } = &cli.command
    {
        let e = cost::estimate(
            &cost::Prices::bundled(),
            &cost::Layout {
                azs: *azs,
                instance_type: instance_type.clone(),
                root_gib: *root_gib,
                gb_per_month: *gb_per_month,
                cloudwatch_metrics: *cloudwatch_metrics,
                addresses: *addresses,
                alarms: *alarms,
            },
        )
        .map_err(BadInput)?;
        out.document(&e);
        out.text(&e);
        return Ok(ExitCode::SUCCESS);
    }
    let (config, partition) = sdk_config(&cli).await?;
    let cloud = Aws::new(&config);
    match &cli.command {
        Cmd::Plan {
            destroy: true,
            topology,
        } => {
            let g = &topology.group;
            let inv = inventory(&cloud, g).await?;
            not_a_stack(&inv, g, "plan --destroy")?;
            let p = plan::destroy(&inv, &g.group);
            show_plan(out, &PlanReport::new(&g.vpc, &g.group, None, &p));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plan {
            destroy: false,
            topology,
        } => {
            let (layout, p) = prepare(&cloud, topology, partition, "plan").await?;
            show_plan(
                out,
                &PlanReport::new(&layout.vpc_id, &layout.group, Some(&layout), &p),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply {
            topology,
            no_wait,
            wait_timeout,
        } => {
            change::apply(
                &cloud,
                out,
                topology,
                partition,
                *no_wait,
                wait_timeout.unwrap_or(DEFAULT_WAIT),
            )
            .await
        }
        Cmd::Destroy { group, yes } => change::destroy(&cloud, out, group, *yes).await,
        Cmd::Export {
            format: ExportFormat::Cloudformation,
            topology,
        } => {
            if !topology.remove_private.is_empty() {
                return Err(BadInput(
                    "export describes a whole group: --remove-private has no meaning there".into(),
                )
                .into());
            }
            if topology.nat64 {
                return Err(BadInput(
                    "export does not build NAT64 yet (the egress-only gateway, the IPv6 routes, DNS64): a group with NAT64 is provisioned by `natron apply --nat64`".into(),
                )
                .into());
            }
            let inv = inventory(&cloud, &topology.group).await?;
            let existing = natron::export::existing(&inv, &topology.group.group);
            if !existing.is_empty() {
                return Err(BadInput(format!(
                    "group {} already exists in {}: {}; a stack would collide with it (export a new group, or `natron destroy` this one first)",
                    topology.group.group,
                    topology.group.vpc,
                    existing.join(", ")
                ))
                .into());
            }
            let (layout, _) = prepare(&cloud, topology, partition, "export").await?;
            let e = natron::export::cloudformation(
                &layout,
                &inv,
                partition,
                natron_contract::AGENT_PORT,
            );
            for n in &e.notes {
                eprintln!("note: {n}");
            }
            // The template is JSON whatever --output says.
            out.raw(format_args!("{:#}\n", e.template));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(g) => {
            let inv = inventory(&cloud, g).await?;
            let s = status::status(&inv, &g.group);
            out.document(&s);
            out.text(&s);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { group, subnets } => {
            let inv = inventory(&cloud, group).await?;
            let findings = check::check(&inv, &group.group, subnets);
            out.document(&findings);
            for f in &findings {
                let level = match f.level {
                    Level::Ok => "ok",
                    Level::Warning => "WARNING",
                    Level::Error => "ERROR",
                };
                out.text(format_args!("{level:<7} {}: {}\n", f.subnet, f.message));
                if !f.fix.is_empty() {
                    out.text(format_args!("        fix: {}\n", f.fix));
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
            regions: to_regions,
            public,
        }) => {
            if !raw.is_file() {
                return Err(BadInput(format!("--raw {}: no such file", raw.display())).into());
            }
            for r in to_regions {
                regions::partition(r).map_err(BadInput)?;
            }
            let opts = natron::publish::Options {
                raw,
                name,
                arch: *arch,
                regions: to_regions.clone(),
                public: *public,
            };
            let published =
                natron::publish::publish(&config, &opts, &mut |line| out.line(line)).await?;
            out.document(&published);
            out.text(format_args!(
                "published {} ({}): snapshot {}, {} of {} blocks uploaded\n",
                published.image_id,
                published.register.name,
                published.snapshot_id,
                published.blocks_uploaded,
                published.blocks_total
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A group built by a CloudFormation stack is the stack's to change.
fn not_a_stack(inv: &natron::model::Inventory, g: &Group, command: &str) -> anyhow::Result<()> {
    match plan::managing_stack(inv, &g.group) {
        Some(stack) => Err(BadInput(format!(
            "group {} in {} is managed by CloudFormation stack {stack} (its resources carry aws:cloudformation:stack-name): update or delete the stack instead of `natron {command}`",
            g.group, g.vpc
        ))
        .into()),
        None => Ok(()),
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

/// Reads the VPC, checks the request and plans; changes nothing. Every
/// input problem is reported at once, a failed image lookup among them.
async fn prepare(
    cloud: &Aws,
    t: &Topology,
    partition: &str,
    command: &str,
) -> anyhow::Result<(natron::layout::Layout, plan::Plan)> {
    let inv = inventory(cloud, &t.group).await?;
    not_a_stack(&inv, &t.group, command)?;
    let instance_type = cloud.instance_type(&t.instance_type).await?;
    let choice = match &t.ami {
        Some(id) => ImageChoice::Id(id.clone()),
        None => ImageChoice::Newest {
            name: t.ami_name.clone().unwrap_or_else(|| "natron-*".into()),
            owner: t.ami_owner.clone().unwrap_or_else(|| "self".into()),
            architectures: instance_type.architectures.clone(),
        },
    };
    let image = match cloud.find_image(&choice).await {
        Ok(image) => Ok(image),
        Err(e) if e.is_not_found() => Err(format!("image: {e}")),
        Err(e) => return Err(e.into()),
    };
    let request = Request {
        vpc_id: t.group.vpc.clone(),
        group: t.group.group.clone(),
        azs: t.azs.clone(),
        private: t.private.clone(),
        public_subnets: t.public_subnets.clone(),
        instance_type: t.instance_type.clone(),
        elastic_ips: t.elastic_ip,
        cloudwatch_metrics: t.cloudwatch_metrics,
        addresses: t.addresses,
        alarms: t.alarms,
        remove: t.remove_private.clone(),
        nat64: t.nat64,
    };
    let layout = layout::resolve(&request, &inv, image, &instance_type)
        .map_err(|errors| BadInput(errors.join("\n")))?;
    let p = plan::plan(&layout, &inv, partition, natron_contract::AGENT_PORT)
        .map_err(|c| BadInput(c.to_string()))?;
    Ok((layout, p))
}

/// The plan in words (text) or as the `plan` document (JSON).
fn show_plan(out: &mut Out, report: &PlanReport) {
    out.document(report);
    print_plan(out, report);
}

fn print_plan(out: &mut Out, report: &PlanReport) {
    if let Some(layout) = &report.layout {
        out.line(format_args!(
            "group {} in {}: image {} ({}), {}",
            layout.group, layout.vpc_id, layout.image.id, layout.image.name, layout.instance_type
        ));
        for z in &layout.zones {
            let private: Vec<String> = z
                .private
                .iter()
                .map(|p| {
                    if p.kept {
                        format!("{} (kept)", p.key())
                    } else {
                        p.key()
                    }
                })
                .collect();
            out.line(format_args!(
                "  {}: NAT in {}, serving {}",
                z.az,
                z.public_subnet,
                private.join(", ")
            ));
        }
    }
    if report.actions.is_empty() {
        out.line("nothing to change");
    } else {
        out.line(format_args!("plan: {} actions", report.actions.len()));
        for a in &report.actions {
            out.line(format_args!("  {:>2}. {}", a.index, a.description));
        }
    }
    for n in &report.notes {
        out.line(format_args!("note: {n}"));
    }
}
