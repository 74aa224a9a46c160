//! The two commands that change the VPC, `apply` and `destroy`: plan,
//! confirm (destroy), run, wait (apply), and say what was done, in text or
//! as one JSON document, also when stopped part-way.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use natron::apply::{RunError, Runner, Wait};
use natron::cloud::Aws;
use natron::plan;
use natron::report::{PlanReport, RunReport};

use crate::args::{Group, Topology};
use crate::output::{Out, Stop};
use crate::{inventory, not_a_stack, prepare, print_plan, BadInput, Interrupted};

/// Ends a run that stopped between actions: why, and what was done.
fn stopped(out: &Out, e: RunError, report: &RunReport, again: &str) -> anyhow::Error {
    let done = format!(
        "{} of {} actions carried out; `{again}` again carries on",
        report.carried_out.len(),
        report.plan.actions.len()
    );
    // Only a stop the run itself reports is ours; an AWS error stays one
    // even when Ctrl-C came meanwhile.
    let ours = matches!(
        e,
        RunError::Interrupted { .. } | RunError::StoppedWaiting { .. }
    );
    match out.stop() {
        Some(Stop::Interrupted) if ours => Interrupted(e).into(),
        Some(Stop::Output(io)) if ours => {
            anyhow::anyhow!("stopped, the output failed ({io}): {done}")
        }
        _ => anyhow::Error::from(e).context(done),
    }
}

pub async fn apply(
    cloud: &Aws,
    out: &mut Out,
    t: &Topology,
    partition: &str,
    no_wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (layout, p) = prepare(cloud, t, partition, "apply").await?;
    let mut report = RunReport::new(PlanReport::new(
        &layout.vpc_id,
        &layout.group,
        Some(&layout),
        &p,
    ));
    print_plan(out, &report.plan);
    out.stop_on_ctrl_c();
    let mut runner = Runner::new(cloud, &layout.vpc_id, &layout.group);
    let (mut carried_out, mut created) = (Vec::new(), Vec::new());
    let run = runner
        .run(&p, &mut out.on_event(&mut carried_out, &mut created))
        .await;
    report.carried_out = carried_out;
    report.created = created;
    let outcome = match run {
        Ok(o) => o,
        Err(e) => {
            let e = stopped(out, e, &report, "natron apply");
            report.error = Some(format!("{e:#}"));
            out.document(&report);
            return Err(e);
        }
    };
    if no_wait {
        for a in &outcome.pending {
            out.line(format_args!("  not yet (--no-wait): {a}"));
        }
        if !outcome.pending.is_empty() {
            out.line("run `natron apply` again once the NATs serve their route tables");
        }
        report.pending = outcome.pending.iter().map(ToString::to_string).collect();
        report.complete = report.pending.is_empty();
        out.document(&report);
        return Ok(ExitCode::SUCCESS);
    }
    out.line(format_args!(
        "waiting (up to {}) for each route table to be served by the NAT of its AZ",
        humantime::format_duration(timeout)
    ));
    let wait = Wait {
        timeout,
        poll: Duration::from_secs(2),
    };
    let (mut more, mut created) = (Vec::new(), Vec::new());
    let waited = runner
        .wait(
            outcome.pending,
            &wait,
            &mut out.on_event(&mut more, &mut created),
        )
        .await;
    match waited {
        Ok(served) => {
            report.served = served;
            report.complete = true;
            out.line(format_args!(
                "done: every private subnet of {} is served by the NAT of its AZ",
                layout.group
            ));
            out.document(&report);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ RunError::Timeout { .. }) => {
            eprintln!("natron: {e}");
            eprintln!("natron: everything else is in place; `natron apply` again carries on");
            report.error = Some(e.to_string());
            out.document(&report);
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            let e = stopped(out, e, &report, "natron apply");
            report.error = Some(format!("{e:#}"));
            out.document(&report);
            Err(e)
        }
    }
}

/// Asks on the terminal to type the group's name; anything else refuses.
fn confirmed(g: &Group, actions: usize) -> anyhow::Result<bool> {
    eprint!(
        "natron: this removes group {} from {} ({actions} actions above).\nType the group's name to go on: ",
        g.group, g.vpc
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == g.group)
}

pub async fn destroy(cloud: &Aws, out: &mut Out, g: &Group, yes: bool) -> anyhow::Result<ExitCode> {
    let inv = inventory(cloud, g).await?;
    not_a_stack(&inv, g, "destroy")?;
    let p = plan::destroy(&inv, &g.group);
    let mut report = RunReport::new(PlanReport::new(&g.vpc, &g.group, None, &p));
    print_plan(out, &report.plan);
    if !p.actions.is_empty() && !yes {
        if !std::io::stdin().is_terminal() {
            out.document(&report);
            return Err(BadInput(format!(
                "destroy of group {} in {}: not confirmed (no terminal to ask on); give --yes to destroy without asking, or `natron plan --destroy` to see the plan alone",
                g.group, g.vpc
            ))
            .into());
        }
        if !confirmed(g, p.actions.len())? {
            out.document(&report);
            return Err(BadInput(format!(
                "destroy of group {} in {}: not confirmed",
                g.group, g.vpc
            ))
            .into());
        }
    }
    out.stop_on_ctrl_c();
    let mut runner = Runner::new(cloud, &g.vpc, &g.group);
    let (mut carried_out, mut created) = (Vec::new(), Vec::new());
    let run = runner
        .run(&p, &mut out.on_event(&mut carried_out, &mut created))
        .await;
    report.carried_out = carried_out;
    if let Err(e) = run {
        let e = stopped(out, e, &report, "natron destroy");
        report.error = Some(format!("{e:#}"));
        out.document(&report);
        return Err(e);
    }
    let left = plan::destroy(&inventory(cloud, g).await?, &g.group);
    if !left.actions.is_empty() {
        let e = anyhow::anyhow!(
            "still tagged with the group after destroy: {}; `natron destroy` again carries on",
            left.actions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        report.error = Some(e.to_string());
        out.document(&report);
        return Err(e).context("destroy incomplete");
    }
    report.complete = true;
    out.line(format_args!(
        "done: nothing tagged {}={} is left in {}",
        natron::model::GROUP_TAG,
        g.group,
        g.vpc
    ));
    out.document(&report);
    Ok(ExitCode::SUCCESS)
}
