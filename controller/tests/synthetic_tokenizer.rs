//! Synthetic prompts reach their target length under a real Hugging Face
//! tokenizer: a byte-pair-encoding `tokenizer.json` built here with the
//! `tokenizers` crate (letters, a few dozen merges, whitespace
//! pre-tokenizer), so that words split into several tokens and the
//! generator cannot simply count words. And the target's tokenizer
//! (`target.tokenizer`, `--tokenizer`) is read, checked and lent to
//! synthetic prompts.

use std::collections::HashMap;
use std::path::Path;

use stampede_controller::dataset::synthetic::{self, Counter, Length, Spec};
use stampede_controller::profile::{Overrides, Profile};
use tokenizers::Tokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

/// Writes a BPE tokenizer: single letters plus merges of common pairs.
fn write_tokenizer(path: &Path) {
    let merges: Vec<(&str, &str)> = vec![
        ("t", "h"),
        ("th", "e"),
        ("e", "r"),
        ("i", "n"),
        ("a", "n"),
        ("o", "n"),
        ("r", "e"),
        ("s", "t"),
        ("e", "s"),
        ("a", "t"),
        ("o", "r"),
        ("e", "n"),
        ("an", "d"),
        ("in", "g"),
        ("e", "d"),
        ("o", "u"),
    ];
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for c in ('a'..='z').chain('A'..='Z').chain('0'..='9') {
        let n = vocab.len() as u32;
        vocab.insert(c.to_string(), n);
    }
    for (a, b) in &merges {
        let n = vocab.len() as u32;
        vocab.entry(format!("{a}{b}")).or_insert(n);
    }
    let n = vocab.len() as u32;
    vocab.insert("[UNK]".to_owned(), n);
    let merges = merges.into_iter().map(|(a, b)| (a.to_owned(), b.to_owned())).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .unk_token("[UNK]".to_owned())
        .build()
        .expect("a valid BPE model");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.save(path, false).expect("tokenizer.json written");
}

#[test]
fn synthetic_prompts_hit_their_target_within_five_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    write_tokenizer(&path);
    let counter = Counter::from_file(&path).expect("the tokenizer loads");
    // The tokenizer really splits words: "the system" is more than 2 tokens.
    assert!(counter.count("the system reads every request").unwrap() > 5);

    let mut worst: f64 = 0.0;
    for target in [16u32, 50, 128, 512, 2000] {
        let spec = Spec {
            count: 20,
            input: Length::Fixed(target),
            output: None,
            shared_prefix: None,
        };
        for prompt in synthetic::generate(&spec, u64::from(target), &counter).unwrap() {
            let got = counter.count(&prompt.text).unwrap() as f64;
            let error = (got - f64::from(target)).abs() / f64::from(target);
            worst = worst.max(error);
            assert!(
                error <= 0.05,
                "target {target} tokens, got {got} ({:.1} % off)",
                error * 100.0
            );
        }
    }
    eprintln!(
        "synthetic prompts: worst length error {:.2} % over 100 prompts of 16 to 2000 tokens",
        worst * 100.0
    );

    // Shared prefixes: the prefix and the whole prompt hit their lengths
    // under the tokenizer too, and the prefix text is the group's own.
    let spec = Spec {
        count: 12,
        input: Length::Fixed(64),
        output: None,
        shared_prefix: Some(synthetic::SharedPrefix {
            groups: 3,
            tokens: 256,
            assign: synthetic::Assign::RoundRobin,
        }),
    };
    let (prompts, workload) = synthetic::generate_shared(&spec, 9, &counter).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let got = counter.count(&prompt.text).unwrap() as f64;
        assert!((got - 320.0).abs() / 320.0 <= 0.05, "prompt {i}: {got} tokens");
        let head = &prompts[i % 3].text[..200];
        assert!(
            prompt.text.starts_with(head),
            "prompt {i} starts with its group's prefix"
        );
    }
    let share = workload.unwrap().shared_share;
    assert!((share - 0.8).abs() < 0.05, "shared share {share}");

    // The same through a profile: a tokenizer path relative to the profile,
    // a normal input distribution, a uniform output one.
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        r#"
        seed = 3
        [load]
        users = 1
        [prompts.synthetic]
        count = 40
        input_tokens = { mean = 300, stddev = 80, min = 100, max = 600 }
        output_tokens = { min = 10, max = 20 }
        tokenizer = "tokenizer.json"
        "#,
    )
    .unwrap();
    let p = Profile::load(&profile, &Overrides::default()).unwrap();
    assert_eq!(p.prompts.len(), 40);
    assert!(
        p.prompt_source.contains("tokens of tokenizer.json"),
        "{}",
        p.prompt_source
    );
    for prompt in &p.prompts {
        let n = counter.count(&prompt.text).unwrap();
        assert!((95..=630).contains(&n), "{n} tokens is outside the bounds (with 5 %)");
        assert!(prompt.max_tokens.is_some_and(|m| (10..=20).contains(&m)));
    }
    let again = Profile::load(&profile, &Overrides::default()).unwrap();
    assert_eq!(p.prompts, again.prompts, "reproducible from the seed");
}

#[test]
fn an_unusable_tokenizer_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "[load]\nusers = 1\n[prompts.synthetic]\ncount = 2\ninput_tokens = 10\ntokenizer = \"tokenizer.json\"\n",
    )
    .unwrap();
    let e = Profile::load(&profile, &Overrides::default()).unwrap_err().to_string();
    assert!(
        e.contains("prompts.synthetic.tokenizer") && e.contains("not a usable tokenizer.json"),
        "{e}"
    );
}

#[test]
fn the_targets_tokenizer_is_read_checked_and_lent_to_synthetic_prompts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model")).unwrap();
    let path = dir.path().join("model/tokenizer.json");
    write_tokenizer(&path);
    let counter = Counter::from_file(&path).expect("the tokenizer loads");
    let profile = dir.path().join("p.toml");
    let write = |tokenizer: &str| {
        let text = format!(
            "[target]\ntokenizer = {tokenizer:?}\n[load]\nusers = 1\n[prompts.synthetic]\ncount = 5\ninput_tokens = 40\n"
        );
        std::fs::write(&profile, text).unwrap();
    };
    // Relative to the profile's folder; synthetic prompts without a
    // tokenizer of their own are built with it.
    write("model/tokenizer.json");
    let p = Profile::load(&profile, &Overrides::default()).unwrap();
    let t = p.target.tokenizer.as_ref().expect("the target's tokenizer");
    assert_eq!(t.name, "model/tokenizer.json");
    assert_eq!(&*t.json, std::fs::read(&path).unwrap().as_slice());
    assert_eq!(t.vocab_size, 26 + 26 + 10 + 16 + 1);
    assert!(
        p.prompt_source.contains("tokens of model/tokenizer.json"),
        "{}",
        p.prompt_source
    );
    for prompt in &p.prompts {
        let n = counter.count(&prompt.text).unwrap();
        assert!((38..=42).contains(&n), "{n} tokens for a 40-token prompt");
    }
    // --tokenizer wins over the profile.
    let other = dir.path().join("other.json");
    std::fs::copy(&path, &other).unwrap();
    let cli = Overrides {
        tokenizer: Some(other.clone()),
        ..Overrides::default()
    };
    let p = Profile::load(&profile, &cli).unwrap();
    assert_eq!(p.target.tokenizer.unwrap().name, other.display().to_string());
    // A missing or unusable file is named with its key, or its flag.
    write("model/missing.json");
    let e = Profile::load(&profile, &Overrides::default()).unwrap_err().to_string();
    assert!(e.contains("target.tokenizer") && e.contains("cannot read"), "{e}");
    std::fs::write(&other, "[1, 2]").unwrap();
    let e = Profile::load(&profile, &cli).unwrap_err().to_string();
    assert!(e.contains("--tokenizer") && e.contains("not a usable"), "{e}");
}
