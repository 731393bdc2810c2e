//! Code blocks out of Markdown answers, and keyword coverage.
//!
//! Only the `final` channel counts: code the model wrote while thinking (analysis) is not
//! its answer. Fences follow CommonMark (https://spec.commonmark.org/0.31.2/#fenced-code-blocks):
//! a line of 3+ backticks or tildes opens a block, its info string's first word is the
//! language, and a line of the same character at least as long closes it. A fence left open
//! (an answer cut by the token budget) runs to the end of the text and is marked unterminated.

use crate::suite::BlockChoice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    /// Lower-cased first word of the info string ("" when none).
    pub language: String,
    pub code: String,
    pub terminated: bool,
}

/// All fenced blocks of `text`, in order.
pub fn code_blocks(text: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize, String, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let fence = fence_of(trimmed).filter(|_| indent <= 3);
        match (&mut open, fence) {
            (None, Some((ch, n, info))) => {
                let language = info.split_whitespace().next().unwrap_or("").to_lowercase();
                open = Some((ch, n, language, Vec::new()));
            }
            (None, None) => {}
            (Some((ch, n, _, _)), Some((c, m, info))) if c == *ch && m >= *n && info.is_empty() => {
                let (_, _, language, lines) = open.take().expect("open block");
                blocks.push(CodeBlock {
                    language,
                    code: join_lines(&lines),
                    terminated: true,
                });
            }
            (Some((_, _, _, lines)), _) => lines.push(line),
        }
    }
    if let Some((_, _, language, lines)) = open {
        blocks.push(CodeBlock {
            language,
            code: join_lines(&lines),
            terminated: false,
        });
    }
    blocks
}

fn join_lines(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// `(fence char, length, info string)` when `line` is a fence.
fn fence_of(line: &str) -> Option<(char, usize, &str)> {
    let ch = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = line.chars().take_while(|c| *c == ch).count();
    if n < 3 {
        return None;
    }
    let info = line[n..].trim();
    // A backtick fence's info string may not contain backticks (it would be inline code).
    if ch == '`' && info.contains('`') {
        return None;
    }
    Some((ch, n, info))
}

/// Whether a block's tag means `wanted` (`python` also accepts `py`, `python3`).
pub fn language_matches(tag: &str, wanted: &str) -> bool {
    let wanted = wanted.to_lowercase();
    let aliases: &[&str] = match wanted.as_str() {
        "python" | "py" | "python3" => &["python", "py", "python3"],
        "bash" | "sh" | "shell" => &["bash", "sh", "shell"],
        _ => &[],
    };
    tag == wanted || aliases.contains(&tag)
}

/// The code to run, or why there is none.
pub fn select_code(text: &str, language: &str, choice: BlockChoice) -> Result<String, String> {
    let all = code_blocks(text);
    let mut blocks: Vec<&CodeBlock> = all
        .iter()
        .filter(|b| language_matches(&b.language, language))
        .collect();
    // An untagged block is taken only when it is the answer's only block.
    if blocks.is_empty() && all.len() == 1 && all[0].language.is_empty() {
        blocks.push(&all[0]);
    }
    if blocks.is_empty() {
        return Err(if all.is_empty() {
            "no code block in the final answer".to_string()
        } else {
            format!(
                "no {language} code block in the final answer ({} other block(s))",
                all.len()
            )
        });
    }
    Ok(match choice {
        BlockChoice::First => blocks[0].code.clone(),
        BlockChoice::Last => blocks[blocks.len() - 1].code.clone(),
        BlockChoice::All => blocks
            .iter()
            .map(|b| b.code.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// Keywords found (case-insensitive substring) in `text`.
pub fn keywords_found(text: &str, keywords: &[String]) -> Vec<bool> {
    let hay = text.to_lowercase();
    keywords
        .iter()
        .map(|k| hay.contains(&k.to_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_block_is_reported() {
        let e = select_code("Just prose.", "python", BlockChoice::Last).unwrap_err();
        assert_eq!(e, "no code block in the final answer");
        let e = select_code("```rust\nfn main(){}\n```", "python", BlockChoice::Last).unwrap_err();
        assert!(e.contains("1 other block"), "{e}");
    }

    #[test]
    fn several_blocks_first_last_all() {
        let t = "a\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\n```js\nno()\n```\n";
        assert_eq!(
            select_code(t, "python", BlockChoice::First).unwrap(),
            "x = 1\n"
        );
        assert_eq!(
            select_code(t, "python", BlockChoice::Last).unwrap(),
            "x = 2\n"
        );
        assert_eq!(
            select_code(t, "python", BlockChoice::All).unwrap(),
            "x = 1\n\nx = 2\n"
        );
    }

    #[test]
    fn an_unterminated_fence_runs_to_the_end() {
        let b = code_blocks("```python\nprint(1)\nprint(2)");
        assert_eq!(b.len(), 1);
        assert!(!b[0].terminated);
        assert_eq!(b[0].code, "print(1)\nprint(2)\n");
    }

    #[test]
    fn fences_nest_by_length_and_char() {
        // A ```` block may contain ``` lines; ~~~ does not close a ``` block.
        let t = "````markdown\n```python\nx\n```\n````\n```python\ny\n~~~\n```";
        let b = code_blocks(t);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].language, "markdown");
        assert_eq!(b[0].code, "```python\nx\n```\n");
        assert_eq!(b[1].code, "y\n~~~\n");
    }

    #[test]
    fn a_lone_untagged_block_is_accepted() {
        assert_eq!(
            select_code("```\nprint(3)\n```", "python", BlockChoice::Last).unwrap(),
            "print(3)\n"
        );
        let two = "```\na\n```\n```\nb\n```";
        assert!(select_code(two, "python", BlockChoice::Last).is_err());
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let k = vec!["Sieve".to_string(), "phi".to_string(), "Möbius".to_string()];
        assert_eq!(
            keywords_found("a SIEVE of PHI values", &k),
            [true, true, false]
        );
    }
}
