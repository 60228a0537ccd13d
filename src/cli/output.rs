//! Input and output of the data commands: JSON-lines input from a file or stdin, and printing data on stdout
//! (a reader that went away, as with `| head`, ends the command quietly, as SIGPIPE would).

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
};

use crate::failure::Failure;

/// The lines of `file`, or of stdin when it is absent or `-`.
pub(super) fn input(file: Option<&PathBuf>) -> anyhow::Result<Box<dyn BufRead>> {
    Ok(match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => Box::new(BufReader::new(
            std::fs::File::open(f).map_err(|e| Failure::Config(format!("cannot read {}: {e}", f.display())))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin())),
    })
}

/// The non-blank lines, numbered from 1 (a read error names its line).
/// The non-blank lines of `reader`, numbered from 1; a line that is not UTF-8 is that line's rejection (the
/// others still read), an error reading the input stops it.
pub(super) fn numbered_lines(
    reader: Box<dyn BufRead>,
) -> impl Iterator<Item = anyhow::Result<(usize, Result<String, String>)>> {
    reader.split(b'\n').enumerate().filter_map(|(i, l)| match l {
        Ok(bytes) => {
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes).to_vec();
            match String::from_utf8(bytes) {
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some(Ok((i + 1, Ok(l)))),
                Err(_) => Some(Ok((i + 1, Err("the line is not UTF-8".to_string())))),
            }
        }
        Err(e) => Some(Err(anyhow::Error::from(e).context(format!("reading line {}", i + 1)))),
    })
}

pub(super) fn line(args: std::fmt::Arguments<'_>) {
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
