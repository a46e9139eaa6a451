//! tern's binary: argv[0] and subcommand dispatch only (see `cli`).

fn main() {
    // argv is bytes: `std::env::args` panics on one that is not UTF-8 (a
    // Latin-1 recipient, a mistyped queue ID). Such an argument becomes
    // U+FFFD-marked text, which every parser then refuses as invalid.
    let args = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(tern::cli::main(args));
}
