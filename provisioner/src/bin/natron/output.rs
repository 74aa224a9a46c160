//! Where the binary writes: text lines or one JSON document on stdout,
//! and the two reasons to stop between actions. A write that fails (a
//! closed pipe, a full disk) never panics: it is recorded, nothing more
//! is written, and a run stops before its next action. Ctrl-C does the
//! same; a second Ctrl-C ends the process at once.

use std::fmt::Display;
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use natron::apply::Event;
use serde::Serialize;

use crate::args::Output;

/// Why a run stopped between actions.
#[derive(Debug)]
pub enum Stop {
    /// stdout failed (its error).
    Output(std::io::Error),
    /// Ctrl-C.
    Interrupted,
}

pub struct Out {
    format: Output,
    failed: Option<std::io::Error>,
    interrupted: Arc<AtomicBool>,
}

impl Out {
    pub fn new(format: Output) -> Out {
        Out {
            format,
            failed: None,
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn json(&self) -> bool {
        self.format == Output::Json
    }

    /// A line of the text output. With `--output json` it goes to stderr,
    /// so progress stays visible and stdout holds one document.
    pub fn line(&mut self, line: impl Display) {
        if self.json() {
            eprintln!("{line}");
        } else {
            self.write(format_args!("{line}\n"));
        }
    }

    /// Text printed as is (already with its newlines), in text mode only.
    pub fn text(&mut self, text: impl Display) {
        if !self.json() {
            self.write(format_args!("{text}"));
        }
    }

    /// Printed as is in either mode (a document that is the command's
    /// output in both, like an exported template).
    pub fn raw(&mut self, text: impl Display) {
        self.write(format_args!("{text}"));
    }

    /// The one JSON document of a command, in JSON mode only.
    pub fn document(&mut self, value: &impl Serialize) {
        if self.json() {
            match serde_json::to_string_pretty(value) {
                Ok(s) => self.write(format_args!("{s}\n")),
                Err(e) => self.failed = Some(std::io::Error::other(e)),
            }
        }
    }

    fn write(&mut self, args: std::fmt::Arguments) {
        if self.failed.is_some() {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
            self.failed = Some(e);
        }
    }

    /// Whether to stop before the next action, and why.
    pub fn stop(&self) -> Option<Stop> {
        if self.interrupted.load(Ordering::SeqCst) {
            return Some(Stop::Interrupted);
        }
        self.failed
            .as_ref()
            .map(|e| Stop::Output(std::io::Error::new(e.kind(), e.to_string())))
    }

    /// The error of a failed stdout, taken once the command is over.
    pub fn take_failure(&mut self) -> Option<std::io::Error> {
        self.failed.take()
    }

    /// From now on, Ctrl-C asks a run to stop between actions (and a
    /// second one ends the process). Only commands that change things
    /// install it; the others keep the default of ending at once.
    pub fn stop_on_ctrl_c(&self) {
        let flag = self.interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "natron: interrupted: stopping before the next action (Ctrl-C again to stop now)"
            );
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "natron: stopped at once; `natron` again carries on from what is in place"
                );
                std::process::exit(130);
            }
        });
    }

    /// The callback a run reports to: prints each step, and stops the run
    /// between actions once stdout failed or Ctrl-C came.
    pub fn on_event<'a>(
        &'a mut self,
        carried_out: &'a mut Vec<usize>,
        created: &'a mut Vec<natron::report::Created>,
    ) -> impl FnMut(Event) -> ControlFlow<()> + 'a {
        move |e| {
            match e {
                Event::Start {
                    index: 0, action, ..
                } => self.line(format_args!("  ... {action}")),
                Event::Start {
                    index,
                    total,
                    action,
                } => {
                    if self.stop().is_none() {
                        self.line(format_args!("  [{index}/{total}] {action}"));
                    }
                    if self.stop().is_none() {
                        carried_out.push(index);
                    }
                }
                Event::Created { what, id } => {
                    self.line(format_args!("        {what}: {id}"));
                    created.push(natron::report::Created { what, id });
                }
                Event::Progress(line) => self.line(format_args!("  {line}")),
                Event::Poll => {}
            }
            match self.stop() {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            }
        }
    }
}
