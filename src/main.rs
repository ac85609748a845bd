fn main() -> std::process::ExitCode {
    coupond::cli::main()
}
