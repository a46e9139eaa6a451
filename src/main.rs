//! tern's binary: argv[0] and subcommand dispatch only (see `cli`).

// The binary is its own crate: the library's crate-wide rule (src/lib.rs).
#![deny(clippy::string_slice, clippy::indexing_slicing)]

/// sysexits.h EX_USAGE.
const EX_USAGE: i32 = 64;

fn main() {
    // argv is bytes: `std::env::args` panics on one that is not UTF-8 (a
    // Latin-1 recipient, a mistyped queue ID). Such an argument is refused
    // here, once: turned into U+FFFD-marked text it would be a valid UTF-8
    // local part since SMTPUTF8, and a Latin-1 `jörg` would have become
    // another address. argv[0] only names the command (multi-call).
    let mut args = Vec::new();
    for (i, arg) in std::env::args_os().enumerate() {
        match arg.into_string() {
            Ok(s) => args.push(s),
            Err(raw) if i == 0 => args.push(raw.to_string_lossy().into_owned()),
            Err(raw) => {
                eprintln!(
                    "tern: argument {i} is not UTF-8: {:?}",
                    raw.to_string_lossy()
                );
                std::process::exit(EX_USAGE);
            }
        }
    }
    std::process::exit(tern::cli::main(args));
}
