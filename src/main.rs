//! tern's binary: argv[0] and subcommand dispatch only (see `cli`).

fn main() {
    std::process::exit(tern::cli::main(std::env::args().collect()));
}
