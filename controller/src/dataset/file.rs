//! Prompt files: JSONL (one `{"prompt": …}` or `{"messages": […]}` object
//! per line, with optional `max_tokens` and `class`) and ShareGPT JSON (a
//! list of `{"conversations": [{"from", "value"}, …]}`).
//!
//! Errors name the file and the line (JSONL) or the entry (ShareGPT).

use std::path::Path;

use serde_json::Value;

use super::Prompt;

/// Most problems listed before the rest are only counted.
const MAX_LISTED: usize = 10;

/// The format of a prompt file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// ShareGPT conversations.
    ShareGpt,
}

impl Format {
    /// Names used in profiles.
    pub const NAMES: [&str; 2] = ["jsonl", "sharegpt"];

    /// The format a file name suggests: `.jsonl` is JSONL, anything else
    /// ShareGPT.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => Format::ShareGpt,
        }
    }

    /// The format with this profile name.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "jsonl" => Some(Format::Jsonl),
            "sharegpt" => Some(Format::ShareGpt),
            _ => None,
        }
    }
}

/// The largest prompt file read. The prompts are held in memory and sent
/// to the agents; real datasets (ShareGPT's is about 650 MiB) fit, a
/// mistaken path to a disk image or a device does not.
pub const MAX_BYTES: u64 = 1 << 30;

/// Reads a prompt file. The error lists what is wrong, with places.
/// Prompts whose line names no `class` have an empty one, for
/// [`super::classify`] to fill by length.
///
/// With `sessions`, each conversation keeps its turns: its system
/// message(s) become the session's system prompt, its user messages its
/// turns, and its assistant messages are dropped (the server's real
/// answers take their place when the session is played). Without, a JSONL
/// `messages` list is flattened into one prompt and a ShareGPT
/// conversation gives its first human turn.
pub fn load(path: &Path, format: Format, sessions: bool) -> Result<Vec<Prompt>, String> {
    let text = stampede_agent::file::read_text(path, MAX_BYTES).map_err(|e| match e {
        stampede_agent::file::ReadError::NotText { .. } => format!("{}: {e}", path.display()),
        _ => format!("{}: cannot read the prompt file: {e}", path.display()),
    })?;
    let prompts = match format {
        Format::Jsonl => jsonl(&text, sessions),
        Format::ShareGpt => sharegpt(&text, sessions),
    }
    .map_err(|problems| {
        let n = problems.len();
        let mut out: Vec<String> = problems
            .into_iter()
            .take(MAX_LISTED)
            .map(|p| format!("{}:{p}", path.display()))
            .collect();
        if n > MAX_LISTED {
            out.push(format!("{}: and {} more problems", path.display(), n - MAX_LISTED));
        }
        out.join("\n")
    })?;
    if prompts.is_empty() {
        return Err(format!("{}: holds no prompts", path.display()));
    }
    Ok(prompts)
}

fn positive(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0)
}

/// A conversation's system prompt and user turns, from `(role, content)`
/// pairs; `None` when it has no user turn.
fn conversation<'a>(turns: impl Iterator<Item = (&'a str, &'a str)>) -> Option<(Option<String>, Vec<String>)> {
    let mut system: Vec<&str> = Vec::new();
    let mut users = Vec::new();
    for (role, content) in turns {
        match role {
            "system" => system.push(content),
            "user" | "human" => users.push(content.to_owned()),
            _ => {}
        }
    }
    if users.is_empty() || users.iter().any(|u| u.trim().is_empty()) {
        return None;
    }
    Some(((!system.is_empty()).then(|| system.join("\n\n")), users))
}

/// A JSONL file; problems are `LINE: message`.
fn jsonl(text: &str, sessions: bool) -> Result<Vec<Prompt>, Vec<String>> {
    let mut prompts = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{n}: invalid JSON: {e}"));
                continue;
            }
        };
        let mut session = (None, Vec::new());
        let text = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(p)), _) => Some(p.clone()),
            (None, Some(Value::Array(messages))) if sessions => {
                let pairs: Option<Vec<(&str, &str)>> = messages
                    .iter()
                    .map(|m| Some((m.get("role")?.as_str()?, m.get("content")?.as_str()?)))
                    .collect();
                match pairs.and_then(|p| conversation(p.into_iter())) {
                    Some((system, mut users)) => {
                        let first = users.remove(0);
                        session = (system, users);
                        Some(first)
                    }
                    None => {
                        problems.push(format!(
                            "{n}: a session needs \"messages\" with at least one non-empty \"user\" turn, each a {{\"role\", \"content\"}} with string contents"
                        ));
                        continue;
                    }
                }
            }
            (None, Some(Value::Array(messages))) => {
                let parts: Option<Vec<&str>> = messages.iter().map(|m| m.get("content")?.as_str()).collect();
                parts.map(|p| p.join("\n\n"))
            }
            _ => None,
        };
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            problems.push(format!(
                "{n}: expected \"prompt\" (a non-empty string) or \"messages\" (a list of {{\"role\", \"content\"}} with string contents)"
            ));
            continue;
        };
        let max_tokens = match v.get("max_tokens") {
            None | Some(Value::Null) => None,
            Some(m) => match positive(m) {
                Some(m) => Some(m),
                None => {
                    problems.push(format!("{n}: max_tokens: expected a positive integer, got {m}"));
                    continue;
                }
            },
        };
        let class = match v.get("class") {
            Some(Value::String(c)) => c.clone(),
            _ => String::new(),
        };
        prompts.push(Prompt {
            text,
            class,
            max_tokens,
            system: session.0,
            turns: session.1,
        });
    }
    if problems.is_empty() {
        Ok(prompts)
    } else {
        Err(problems)
    }
}

/// A ShareGPT file: each conversation's first human turn is a prompt, and
/// the turn answering it, when there is one, gives its output length in
/// words (as `max_tokens`). Conversations without a human turn are
/// skipped. With `sessions`, every human turn is kept (see [`load`]), and
/// the first answer's length is every turn's limit. Problems are
/// ` entry N: message`.
fn sharegpt(text: &str, sessions: bool) -> Result<Vec<Prompt>, Vec<String>> {
    let v: Value = serde_json::from_str(text).map_err(|e| vec![format!("{}: invalid JSON: {e}", e.line())])?;
    let Value::Array(entries) = v else {
        return Err(vec![" expected a JSON list of conversations (ShareGPT)".to_owned()]);
    };
    let mut prompts = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(Value::Array(turns)) = entry.get("conversations") else {
            problems.push(format!(
                " entry {i}: expected \"conversations\", a list of {{\"from\", \"value\"}}"
            ));
            continue;
        };
        let from = |t: &Value| t.get("from").and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(first) = turns.iter().position(|t| matches!(from(t).as_str(), "human" | "user")) else {
            continue;
        };
        let Some(text) = turns[first]
            .get("value")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
        else {
            continue;
        };
        let reference = turns
            .get(first + 1)
            .filter(|t| matches!(from(t).as_str(), "gpt" | "assistant"))
            .and_then(|t| t.get("value")?.as_str());
        let max_tokens = reference
            .map(|r| r.split_whitespace().count())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        let (system, turns) = if sessions {
            let pairs = turns.iter().map(|t| {
                let role = match t.get("from").and_then(Value::as_str).unwrap_or_default() {
                    "human" | "user" => "user",
                    other => other,
                };
                (role, t.get("value").and_then(Value::as_str).unwrap_or_default())
            });
            match conversation(pairs) {
                Some((system, users)) => (system, users.into_iter().skip(1).collect()),
                None => continue,
            }
        } else {
            (None, Vec::new())
        };
        prompts.push(Prompt {
            text: text.to_owned(),
            class: String::new(),
            max_tokens,
            system,
            turns,
        });
    }
    if problems.is_empty() {
        Ok(prompts)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn jsonl_prompts_messages_limits_and_classes() {
        let (_d, path) = write(
            "p.jsonl",
            concat!(
                "{\"prompt\": \"What is a queue?\", \"max_tokens\": 32}\n",
                "\n",
                "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}], \"class\": \"chat\"}\n",
            ),
        );
        let p = load(&path, Format::of(&path), false).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].text.as_str(), p[0].max_tokens, p[0].class.as_str()),
            ("What is a queue?", Some(32), "")
        );
        assert_eq!((p[1].text.as_str(), p[1].class.as_str()), ("Be brief.\n\nHi", "chat"));
    }

    #[test]
    fn jsonl_problems_name_their_lines() {
        let (_d, path) = write(
            "bad.jsonl",
            "{\"prompt\": \"ok\"}\n{\"prompt\": 5}\n{not json\n{\"prompt\": \"x\", \"max_tokens\": -1}\n",
        );
        let e = load(&path, Format::Jsonl, false).unwrap_err();
        let shown = path.display().to_string();
        assert!(e.contains(&format!("{shown}:2: expected \"prompt\"")), "{e}");
        assert!(e.contains(&format!("{shown}:3: invalid JSON")), "{e}");
        assert!(
            e.contains(&format!("{shown}:4: max_tokens: expected a positive integer, got -1")),
            "{e}"
        );
        let e = load(Path::new("/no/such/prompts.jsonl"), Format::Jsonl, false).unwrap_err();
        assert!(e.contains("/no/such/prompts.jsonl: cannot read the prompt file"), "{e}");
        let (_d, path) = write("bin.jsonl", "{\"prompt\": \"\u{e9}\"}\n");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0xff);
        std::fs::write(&path, bytes).unwrap();
        assert!(load(&path, Format::Jsonl, false).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn sharegpt_takes_the_first_human_turn_and_the_answers_length() {
        let (_d, path) = write(
            "sg.json",
            r#"[
              {"id": "a", "conversations": [{"from": "human", "value": "Tell me a story"}, {"from": "gpt", "value": "Once upon a time"}]},
              {"id": "b", "conversations": [{"from": "gpt", "value": "no question here"}]},
              {"id": "c", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "Why?"}]}
            ]"#,
        );
        let p = load(&path, Format::of(&path), false).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].text.as_str(), p[0].max_tokens), ("Tell me a story", Some(4)));
        assert_eq!((p[1].text.as_str(), p[1].max_tokens), ("Why?", None));
        let (_d, path) = write("sg.json", r#"{"conversations": []}"#);
        assert!(
            load(&path, Format::ShareGpt, false)
                .unwrap_err()
                .contains("expected a JSON list")
        );
    }

    #[test]
    fn sessions_keep_the_user_turns_and_drop_the_answers() {
        let (_d, path) = write(
            "s.jsonl",
            concat!(
                "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"Why?\"}]}\n",
                "{\"prompt\": \"One turn\"}\n",
            ),
        );
        let p = load(&path, Format::Jsonl, true).unwrap();
        assert_eq!(
            (p[0].system.as_deref(), p[0].text.as_str(), &p[0].turns[..]),
            (Some("Be brief."), "Hi", &["Why?".to_owned()][..])
        );
        assert_eq!((p[1].system.as_deref(), p[1].turns.len()), (None, 0));
        let (_d, bad) = write(
            "b.jsonl",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}]}\n",
        );
        assert!(
            load(&bad, Format::Jsonl, true)
                .unwrap_err()
                .contains(":1: a session needs")
        );
        let (_d, path) = write(
            "sg.json",
            r#"[{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "A"}, {"from": "gpt", "value": "one two"}, {"from": "human", "value": "B"}, {"from": "gpt", "value": "x"}, {"from": "human", "value": "C"}]}]"#,
        );
        let p = load(&path, Format::ShareGpt, true).unwrap();
        assert_eq!(
            (
                p[0].system.as_deref(),
                p[0].text.as_str(),
                p[0].turns.clone(),
                p[0].max_tokens
            ),
            (Some("S"), "A", vec!["B".to_owned(), "C".to_owned()], Some(2))
        );
        let flat = load(&path, Format::ShareGpt, false).unwrap();
        assert!(flat[0].turns.is_empty() && flat[0].system.is_none());
    }
}
