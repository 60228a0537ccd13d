//! Logging: JSON lines when the output is not a terminal, readable text when it is; `RUST_LOG` respected.
//! Context comes from spans: a run's (`run_id`, `job`, `slot`) and, inside it, an item's (`user_id`); a JSON
//! line carries the innermost in `span` and all of them, outermost first, in `spans`.
//! Commands that print data on stdout (`runs`, `token`, `guard`, …) log to stderr instead.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt::writer::BoxMakeWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogTo {
    Stdout,
    Stderr,
}

pub(crate) fn init(to: LogTo) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (terminal, writer) = match to {
        LogTo::Stdout => (std::io::stdout().is_terminal(), BoxMakeWriter::new(std::io::stdout)),
        LogTo::Stderr => (std::io::stderr().is_terminal(), BoxMakeWriter::new(std::io::stderr)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = if terminal {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init()
    };
}
