//! Printing data on stdout: a reader that went away (`| head`) ends the command quietly, as SIGPIPE would.

use std::io::Write;

pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("astra-worker: error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for data on stdout.
macro_rules! outln {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::output::line(format_args!($($t)*)) };
}
