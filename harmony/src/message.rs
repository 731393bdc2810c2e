//! Harmony messages: who speaks, on which channel, to whom, and what.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    /// A tool result; the header shows the tool's name (e.g. `functions.read`) instead.
    Tool,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }
}

/// The system message body (openai-harmony `SystemContent`, without built-in browser/python tools).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemContent {
    pub model_identity: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub knowledge_cutoff: Option<String>,
    pub conversation_start_date: Option<String>,
    pub valid_channels: Vec<String>,
    pub channel_required: bool,
}

impl Default for SystemContent {
    /// openai-harmony's `SystemContent.new()` defaults.
    fn default() -> Self {
        Self {
            model_identity: Some(
                "You are ChatGPT, a large language model trained by OpenAI.".to_string(),
            ),
            reasoning_effort: Some(ReasoningEffort::Medium),
            knowledge_cutoff: Some("2024-06".to_string()),
            conversation_start_date: None,
            valid_channels: vec!["analysis".into(), "commentary".into(), "final".into()],
            channel_required: true,
        }
    }
}

impl SystemContent {
    pub fn with_reasoning_effort(mut self, e: ReasoningEffort) -> Self {
        self.reasoning_effort = Some(e);
        self
    }

    pub fn with_conversation_start_date(mut self, date: impl Into<String>) -> Self {
        self.conversation_start_date = Some(date.into());
        self
    }
}

/// One function tool of the `functions` namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDescription {
    pub name: String,
    pub description: String,
    /// JSON schema of the single argument object; `None` renders `() => any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// The developer message body: instructions plus the `functions` tool namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeveloperContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDescription>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    System(SystemContent),
    Developer(DeveloperContent),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// Author name: for tool results the tool (`functions.read`), optional otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub content: Content,
}

impl Message {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            name: None,
            channel: None,
            recipient: None,
            content_type: None,
            content: Content::Text(text.into()),
        }
    }

    pub fn system(sys: SystemContent) -> Self {
        Self {
            content: Content::System(sys),
            ..Self::new(Role::System, "")
        }
    }

    pub fn developer(dev: DeveloperContent) -> Self {
        Self {
            content: Content::Developer(dev),
            ..Self::new(Role::Developer, "")
        }
    }

    pub fn user(text: impl Into<String>) -> Self {
        Self::new(Role::User, text)
    }

    /// Assistant text on a channel (`analysis`, `commentary` or `final`).
    pub fn assistant(channel: &str, text: impl Into<String>) -> Self {
        Self::new(Role::Assistant, text).with_channel(channel)
    }

    /// Assistant call of `functions.{name}` with JSON arguments.
    pub fn tool_call(name: &str, arguments_json: impl Into<String>) -> Self {
        Self::new(Role::Assistant, arguments_json)
            .with_channel("commentary")
            .with_recipient(format!("functions.{name}"))
            .with_content_type("<|constrain|>json")
    }

    /// Result of `functions.{name}` sent back to the assistant.
    pub fn tool_result(name: &str, output: impl Into<String>) -> Self {
        let mut m = Self::new(Role::Tool, output)
            .with_channel("commentary")
            .with_recipient("assistant");
        m.name = Some(format!("functions.{name}"));
        m
    }

    pub fn with_channel(mut self, c: impl Into<String>) -> Self {
        self.channel = Some(c.into());
        self
    }

    pub fn with_recipient(mut self, r: impl Into<String>) -> Self {
        self.recipient = Some(r.into());
        self
    }

    pub fn with_content_type(mut self, t: impl Into<String>) -> Self {
        self.content_type = Some(t.into());
        self
    }

    /// The text body, or "" for system/developer content.
    pub fn text(&self) -> &str {
        match &self.content {
            Content::Text(t) => t,
            _ => "",
        }
    }
}
