//! Agent-trace metrics: does a generated continuation of a held-out session sample act like
//! the agent in the logs?
//!
//! Per sample (context up to the target turn, then the model continues):
//! - `harmony_ok`: the continuation parses as Harmony;
//! - tool calls: each names a tool declared in the sample's developer message, with arguments
//!   that parse as JSON and conform to that tool's schema;
//! - `first_action_match`: the first action (a tool call, or an answer in `final`; analysis and
//!   preambles are not actions) is the reference's (same tool, or both answer);
//! - `ends_cleanly`: the turn ends with `<|return|>` or `<|call|>` within the token budget.

use crate::schema::violation;
use osstune_harmony::{Content, Message, Role, ToolDescription};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "tool", rename_all = "snake_case")]
pub enum Action {
    /// A call of `functions.NAME` (the recipient as written, for undeclared ones).
    Tool(String),
    /// An answer in the `final` channel.
    Final,
    /// Neither (only analysis, or nothing parsable).
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallCheck {
    pub recipient: String,
    pub declared: bool,
    pub json_ok: bool,
    pub schema_ok: bool,
    /// First problem, if any.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleMetrics {
    pub id: String,
    pub harmony_ok: bool,
    pub harmony_error: Option<String>,
    pub tool_calls: Vec<ToolCallCheck>,
    pub first_action: Action,
    pub reference_action: Action,
    pub first_action_match: bool,
    pub ends_cleanly: bool,
    pub stop: String,
    pub tokens: usize,
}

/// The tools declared in the sample's developer message.
pub fn declared_tools(messages: &[Message]) -> Vec<ToolDescription> {
    messages
        .iter()
        .filter_map(|m| match &m.content {
            Content::Developer(d) => Some(d.tools.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The first action among `messages`.
pub fn first_action(messages: &[Message]) -> Action {
    for m in messages.iter().filter(|m| m.role == Role::Assistant) {
        if let Some(r) = &m.recipient {
            return Action::Tool(r.strip_prefix("functions.").unwrap_or(r).to_string());
        }
        if m.channel.as_deref() == Some("final") {
            return Action::Final;
        }
    }
    Action::None
}

/// The reference's first action: the target turn starts after the last user message.
pub fn reference_action(sample_messages: &[Message]) -> Action {
    let start = sample_messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .map_or(0, |i| i + 1);
    first_action(&sample_messages[start..])
}

/// Checks each tool call in `generated` against `tools`.
pub fn check_tool_calls(generated: &[Message], tools: &[ToolDescription]) -> Vec<ToolCallCheck> {
    generated
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .filter_map(|m| m.recipient.as_ref().map(|r| (r, m.text())))
        .map(|(recipient, args)| {
            let tool = recipient
                .strip_prefix("functions.")
                .and_then(|name| tools.iter().find(|t| t.name == name));
            let parsed: Result<Value, _> = serde_json::from_str(args.trim());
            let mut problem = None;
            if tool.is_none() {
                problem = Some(format!("{recipient} is not a declared tool"));
            }
            let json_ok = parsed.is_ok();
            if let Err(e) = &parsed {
                problem.get_or_insert(format!("arguments are not JSON: {e}"));
            }
            let schema_ok = match (&parsed, tool.and_then(|t| t.parameters.as_ref())) {
                (Ok(v), Some(schema)) => match violation(schema, v) {
                    None => true,
                    Some(why) => {
                        problem.get_or_insert(format!("arguments: {why}"));
                        false
                    }
                },
                // A declared tool without a schema takes any JSON.
                (Ok(_), None) => tool.is_some(),
                (Err(_), _) => false,
            };
            ToolCallCheck {
                recipient: recipient.clone(),
                declared: tool.is_some(),
                json_ok,
                schema_ok,
                problem,
            }
        })
        .collect()
}

/// Scores one continuation. `stop` names what ended generation; `ends_cleanly` says whether it
/// was `<|return|>` or `<|call|>`.
pub fn score(
    id: &str,
    sample_messages: &[Message],
    generated: &[Message],
    harmony_error: Option<String>,
    stop: &str,
    ends_cleanly: bool,
    tokens: usize,
) -> SampleMetrics {
    let tools = declared_tools(sample_messages);
    let first = first_action(generated);
    let reference = reference_action(sample_messages);
    SampleMetrics {
        id: id.to_string(),
        harmony_ok: harmony_error.is_none() && !generated.is_empty(),
        harmony_error,
        tool_calls: check_tool_calls(generated, &tools),
        first_action_match: first != Action::None && first == reference,
        first_action: first,
        reference_action: reference,
        ends_cleanly,
        stop: stop.to_string(),
        tokens,
    }
}

/// A rate with its counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    pub hits: usize,
    pub of: usize,
}

impl Rate {
    pub fn pct(&self) -> f64 {
        if self.of == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.of as f64
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.of == 0 {
            return write!(f, "n/a (0/0)");
        }
        write!(f, "{:.0}% ({}/{})", self.pct(), self.hits, self.of)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rates {
    pub harmony_ok: Rate,
    /// Over all generated tool calls.
    pub tool_declared: Rate,
    pub tool_json_ok: Rate,
    pub tool_schema_ok: Rate,
    pub first_action_match: Rate,
    pub ends_cleanly: Rate,
}

pub fn rates(samples: &[SampleMetrics]) -> Rates {
    let count = |f: &dyn Fn(&SampleMetrics) -> bool| Rate {
        hits: samples.iter().filter(|s| f(s)).count(),
        of: samples.len(),
    };
    let calls: Vec<&ToolCallCheck> = samples.iter().flat_map(|s| &s.tool_calls).collect();
    let over_calls = |f: &dyn Fn(&ToolCallCheck) -> bool| Rate {
        hits: calls.iter().filter(|c| f(c)).count(),
        of: calls.len(),
    };
    Rates {
        harmony_ok: count(&|s| s.harmony_ok),
        tool_declared: over_calls(&|c| c.declared),
        tool_json_ok: over_calls(&|c| c.json_ok),
        tool_schema_ok: over_calls(&|c| c.declared && c.schema_ok),
        first_action_match: count(&|s| s.first_action_match),
        ends_cleanly: count(&|s| s.ends_cleanly),
    }
}

/// Where the target turn starts: the first trained token. The context is everything before
/// it (it ends with `<|start|>assistant`, which the harness writes; docs/data.md).
pub fn context_len(loss_mask: &[u8]) -> Option<usize> {
    loss_mask.iter().position(|&m| m == 1).filter(|&i| i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use osstune_harmony::DeveloperContent;
    use serde_json::json;

    fn sample() -> Vec<Message> {
        let dev = DeveloperContent {
            instructions: Some("Work in /repo".into()),
            tools: vec![ToolDescription {
                name: "read".into(),
                description: "Read a file".into(),
                parameters: Some(json!({
                    "type": "object",
                    "properties": {"filePath": {"type": "string"}},
                    "required": ["filePath"]
                })),
            }],
        };
        vec![
            Message::developer(dev),
            Message::user("old prompt"),
            Message::assistant("final", "old answer"),
            Message::user("read the README"),
            Message::assistant("analysis", "I should read it."),
            Message::tool_call("read", r#"{"filePath":"README.md"}"#),
            Message::tool_result("read", "# hi"),
            Message::assistant("final", "It says hi."),
        ]
    }

    #[test]
    fn the_reference_action_is_the_target_turns_first_call() {
        assert_eq!(reference_action(&sample()), Action::Tool("read".into()));
        let answer_only = [Message::user("hi"), Message::assistant("final", "hello")];
        assert_eq!(reference_action(&answer_only), Action::Final);
    }

    #[test]
    fn a_good_tool_call_scores_everything() {
        let gen = [
            Message::assistant("analysis", "Reading."),
            Message::tool_call("read", r#"{"filePath": "README.md"}"#),
        ];
        let m = score("s", &sample(), &gen, None, "<|call|>", true, 20);
        assert!(m.harmony_ok && m.first_action_match && m.ends_cleanly);
        assert_eq!(m.tool_calls.len(), 1);
        let c = &m.tool_calls[0];
        assert!(c.declared && c.json_ok && c.schema_ok, "{c:?}");
    }

    #[test]
    fn bad_calls_are_each_caught() {
        let gen = [
            Message::tool_call("write", r#"{"filePath": "x"}"#),
            Message::tool_call("read", "{filePath: x"),
            Message::tool_call("read", r#"{"path": "x"}"#),
        ];
        let m = score("s", &sample(), &gen, None, "max_tokens", false, 64);
        let c = &m.tool_calls;
        assert!(!c[0].declared && c[0].json_ok);
        assert!(c[1].declared && !c[1].json_ok && !c[1].schema_ok);
        assert!(c[2].declared && c[2].json_ok && !c[2].schema_ok);
        assert!(c[2].problem.as_deref().unwrap().contains("filePath"));
        // The first action names another tool than the reference's.
        assert_eq!(m.first_action, Action::Tool("write".into()));
        assert!(!m.first_action_match);
        let r = rates(&[m]);
        assert_eq!(r.tool_declared, Rate { hits: 2, of: 3 });
        assert_eq!(r.tool_json_ok, Rate { hits: 2, of: 3 });
        assert_eq!(r.tool_schema_ok, Rate { hits: 0, of: 3 });
        assert_eq!(r.ends_cleanly, Rate { hits: 0, of: 1 });
    }

    #[test]
    fn unparsable_output_is_not_harmony_and_has_no_action() {
        let m = score(
            "s",
            &sample(),
            &[],
            Some("bad header".into()),
            "max_tokens",
            false,
            8,
        );
        assert!(!m.harmony_ok && !m.first_action_match);
        assert_eq!(m.first_action, Action::None);
    }

    #[test]
    fn context_ends_before_the_first_trained_token() {
        assert_eq!(context_len(&[0, 0, 0, 1, 1, 0]), Some(3));
        assert_eq!(context_len(&[0, 0]), None);
        assert_eq!(context_len(&[1, 1]), None);
    }
}
