//! Replays every checked-in fuzz input (the seed corpora under
//! `fuzz/corpus/NAME/` and the crash reproducers under
//! `fuzz/regressions/NAME/`) through `tern::fuzz_targets::NAME`, so
//! `cargo test` catches a regression without a fuzzer or a nightly
//! toolchain. A directory that names no target is an error: targets and
//! corpora cannot drift apart.

use std::fs;
use std::path::Path;

use tern::fuzz_targets::TARGETS;

fn replay(root: &Path) -> usize {
    let mut replayed = 0;
    let Ok(dirs) = fs::read_dir(root) else {
        return 0;
    };
    let mut dirs: Vec<_> = dirs.map(|d| d.expect("read dir").path()).collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 directory name")
            .to_string();
        if !dir.is_dir() {
            // README files and the like.
            continue;
        }
        let target = TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| {
                panic!(
                    "{} names no fuzz target (known: {:?})",
                    dir.display(),
                    TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>()
                )
            });
        let mut files: Vec<_> = fs::read_dir(&dir)
            .expect("read corpus dir")
            .map(|f| f.expect("read entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = fs::read(&file).expect("read input");
            eprintln!("replaying {}", file.display());
            target(&data);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_checked_in_fuzz_input_replays_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = replay(&fuzz.join("corpus"));
    let regressions = replay(&fuzz.join("regressions"));
    eprintln!("replayed {corpus} corpus and {regressions} regression inputs");
    assert!(corpus > 0, "no fuzz corpus found under {}", fuzz.display());
}

#[test]
fn every_target_has_a_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in TARGETS {
        let count = fs::read_dir(corpus.join(name))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(count > 0, "fuzz target {name} has no seed corpus");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz target {name} has no fuzz/fuzz_targets/{name}.rs"
        );
    }
}
