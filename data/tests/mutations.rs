//! A seeded mutation sweep over the new readers' fixtures (a cheap stand-in for a fuzzer that
//! runs in CI): flipped bytes, truncations and spliced lines must give warnings or a clean
//! error, never a panic or a hang.

use std::path::{Path, PathBuf};

use osstune_data::{convert, ConvertOptions};
use osstune_harmony::Tokenizer;

/// SplitMix64 (https://prng.di.unimi.it/splitmix64.c): the sweep must be reproducible.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn mutate(r: &mut Mix, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    match r.below(4) {
        0 => {
            for _ in 0..1 + r.below(8) {
                let i = r.below(b.len());
                b[i] = r.next() as u8;
            }
        }
        1 => b.truncate(r.below(b.len())),
        2 => {
            // Splice a chunk of the file somewhere else (duplicated or shifted records).
            let (from, len) = (r.below(b.len()), r.below(200));
            let chunk: Vec<u8> = b[from..(from + len).min(b.len())].to_vec();
            let at = r.below(b.len());
            b.splice(at..at, chunk);
        }
        _ => {
            let at = r.below(b.len());
            let junk: &[u8] = [&b"\"}]"[..], b"null", b"\n{", b"\xff\xfe", b"data: {"][r.below(5)];
            b.splice(at..at, junk.iter().copied());
        }
    }
    b
}

#[test]
fn mutated_inputs_never_panic() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let dir = std::env::temp_dir().join(format!("osstune-mutations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut r = Mix(17);
    let mut converted = 0;
    // OSSTUNE_MUTATION_SCALE=N runs N times more rounds (a longer sweep by hand).
    let scale: usize = std::env::var("OSSTUNE_MUTATION_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for (name, rounds) in [
        ("events/run.jsonl", 40),
        ("events/server.sse", 40),
        ("chat/openai.jsonl", 40),
        ("chat/sharegpt.jsonl", 40),
        ("parquet/chat.parquet", 60),
    ] {
        let src = std::fs::read(fixture(name)).unwrap();
        let file_name = Path::new(name).file_name().unwrap();
        for round in 0..rounds * scale {
            let input = dir.join(format!("in-{round}"));
            std::fs::create_dir_all(&input).unwrap();
            let p = input.join(file_name);
            std::fs::write(&p, mutate(&mut r, &src)).unwrap();
            let opts = ConvertOptions {
                inputs: vec![p],
                out: dir.join("out"),
                ..Default::default()
            };
            // An Err (nothing readable) is fine; a panic fails the test with the case named.
            let res = std::panic::catch_unwind(|| convert(&tok, &opts).map(|s| s.samples_kept));
            if res.is_err() {
                // Keep the input for a regression fixture.
                let keep = std::env::temp_dir().join(format!(
                    "osstune-mutant-{round}-{}",
                    file_name.to_string_lossy()
                ));
                std::fs::copy(input.join(file_name), &keep).unwrap();
                panic!(
                    "{name} round {round} panicked; input kept at {}",
                    keep.display()
                );
            }
            converted += usize::from(matches!(res, Ok(Ok(n)) if n > 0));
            std::fs::remove_dir_all(&input).unwrap();
        }
    }
    assert!(
        converted > 50,
        "most mutants still convert something: {converted}"
    );
}
