//! The `eddy` command-line tool; see `eddy_sdk::cli`.

fn main() -> std::process::ExitCode {
    eddy_sdk::cli::main()
}
