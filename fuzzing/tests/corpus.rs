//! Replays every committed fuzz input through its target, on stable, in CI: the corpus each
//! target grew (`fuzz/corpus/<target>/`) and every input that once crashed a target
//! (`fuzz/regressions/<target>/`, kept with the fix). A target panics when a property breaks, so
//! this fails on a regression. The fuzzers themselves run by hand (`fuzz/README.md`).

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut total = 0;
    for (target, run) in fuzzing::TARGETS {
        let files = inputs(kind, target);
        for f in &files {
            // A running fuzzer replaces corpus files as it reduces them: skip one that vanished.
            let Ok(data) = std::fs::read(f) else {
                continue;
            };
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", f.display());
        }
        total += files.len();
    }
    total
}

#[test]
fn every_corpus_input_keeps_its_properties() {
    let n = replay("corpus");
    // Every target has a corpus (seeds at least).
    for (target, _) in fuzzing::TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "{target} has no corpus"
        );
    }
    println!("{n} corpus inputs replayed");
}

#[test]
fn every_crash_found_stays_fixed() {
    let n = replay("regressions");
    println!("{n} former crashes replayed");
}
