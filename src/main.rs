//! The `astra-worker` binary: everything lives in the library; this only hands over.

fn main() -> std::process::ExitCode {
    astra_worker::cli::main()
}
