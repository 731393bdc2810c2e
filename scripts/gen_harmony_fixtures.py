#!/usr/bin/env python3
"""Golden Harmony renderings from OpenAI's own implementation (openai-harmony).

Writes fixtures/harmony/conversations.json, read by harmony/tests/parity.rs, which checks that
osstune-harmony renders every conversation to exactly the same token ids and parses token
streams into the same messages.

For each conversation (messages in osstune's JSON form, see harmony/src/message.rs):
  render_drop        render_conversation, auto_drop_analysis on (openai-harmony's default)
  render_nodrop      render_conversation, auto_drop_analysis off
  training           render_conversation_for_training, auto_drop_analysis off (osstune keeps
                     the target turn's analysis)
  completion         render_conversation_for_completion(assistant), auto_drop_analysis on
  parsed_nodrop      render_nodrop parsed back by openai-harmony
  model_order        assistant tool calls with the recipient AFTER the channel, as gpt-oss emits
                     them and osstune trains on them: {text, ids = encode(text, all specials),
                     parsed = openai-harmony's parse of ids}
  generated          the tokens a model would generate after the completion prompt of the last
                     user message (model order), and openai-harmony's parse of them with
                     role=assistant (the streaming case of `osstune generate`)

Run by hand (offline; tiktoken-rs ships the vocabulary):
  TIKTOKEN_ENCODINGS_BASE=$(ls -d ~/.cargo/registry/src/*/tiktoken-rs-0.12.1/assets) \
    /tmp/refvenv/bin/python scripts/gen_harmony_fixtures.py

With --check-samples OUT/train.jsonl it instead parses the input_ids of every sample written
by `osstune data convert` with openai-harmony and checks the roles/channels/recipients/contents
against the sample's messages (exit 1 on any mismatch).
"""
import json
import os
import re
import sys

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    TextContent,
    ToolDescription,
    load_harmony_encoding,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "harmony", "conversations.json")

ENC = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
DROP = RenderConversationConfig(auto_drop_analysis=True)
NODROP = RenderConversationConfig(auto_drop_analysis=False)

# ---------------------------------------------------------------- tool schemas
WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
    },
    "required": ["location"],
}
KITCHENSINK = {
    "description": "params object",
    "type": "object",
    "properties": {
        "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
        "string_nullable": {"type": "string", "nullable": True, "description": "A nullable string", "default": "the default"},
        "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
        "oneof_string_or_number": {
            "oneOf": [
                {"type": "string", "default": "default_string_in_oneof"},
                {"type": "number", "description": "numbers can happen too"},
            ],
            "description": "a oneof",
            "default": 20,
        },
    },
}
NESTED = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "Absolute path"},
        "limit": {"type": "integer", "description": "Max lines", "default": 2000},
        "recursive": {"type": "boolean"},
        "mixed": {"type": ["string", "integer"]},
        "edits": {
            "type": "array",
            "description": "Edits to apply in order",
            "items": {
                "type": "object",
                "properties": {
                    "old_string": {"type": "string"},
                    "new_string": {"type": "string"},
                    "replace_all": {"type": "boolean", "default": False},
                },
                "required": ["old_string", "new_string"],
            },
        },
        "options": {
            "type": "object",
            "description": "Nested options",
            "properties": {"mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"}},
        },
        "tags": {"type": "array"},
        "anything": {},
    },
    "required": ["path", "edits"],
}
READ = {
    "type": "object",
    "properties": {"filePath": {"type": "string", "description": "The path to the file to read"}},
    "required": ["filePath"],
}
BASH = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "description": "The command to execute"},
        "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
    },
    "required": ["command"],
}


def tool(name, desc, params=None):
    return {"name": name, "description": desc, **({"parameters": params} if params is not None else {})}


def system(effort="medium", date=None):
    return {
        "role": "system",
        "content": {
            "model_identity": "You are ChatGPT, a large language model trained by OpenAI.",
            "reasoning_effort": effort,
            "knowledge_cutoff": "2024-06",
            "conversation_start_date": date,
            "valid_channels": ["analysis", "commentary", "final"],
            "channel_required": True,
        },
    }


def developer(instructions=None, tools=()):
    c = {}
    if instructions is not None:
        c["instructions"] = instructions
    if tools:
        c["tools"] = list(tools)
    return {"role": "developer", "content": c}


def user(t):
    return {"role": "user", "content": t}


def asst(channel, t):
    return {"role": "assistant", "channel": channel, "content": t}


def call(name, args):
    return {
        "role": "assistant",
        "channel": "commentary",
        "recipient": f"functions.{name}",
        "content_type": "<|constrain|>json",
        "content": json.dumps(args),
    }


def result(name, out):
    return {"role": "tool", "name": f"functions.{name}", "channel": "commentary", "recipient": "assistant", "content": out}


CONVERSATIONS = {
    "simple": [system(), user("What is 2 + 2?"), asst("analysis", "User asks a simple sum. 2+2=4."), asst("final", "2 + 2 = 4.")],
    "no_system_effort_low": [system("low"), developer("Answer in French."), user("Hello!"), asst("final", "Bonjour !")],
    "tools_kitchensink": [
        system("high", "2025-06-28"),
        developer(
            "Always respond in riddles",
            [
                tool("get_location", "Gets the location of the user."),
                tool("get_current_weather", "Gets the current weather in the provided location.", WEATHER),
                tool("kitchensink", "A function with various complex schemas.", KITCHENSINK),
                tool("multi_edit", "Apply several edits.\nSecond line of the description.", NESTED),
                tool("empty_desc", "", {"type": "object", "properties": {}}),
            ],
        ),
        user("What is the weather like in SF?"),
    ],
    "agent_turns": [
        system("high"),
        developer("You are a coding agent.", [tool("read", "Read a file.", READ), tool("bash", "Run a shell command.", BASH)]),
        user("Why does `cargo test` fail?"),
        asst("analysis", "Need to run the tests first."),
        asst("commentary", "Running the test suite."),
        call("bash", {"command": "cargo test 2>&1 | tail -20"}),
        result("bash", "error[E0425]: cannot find value `x` in this scope\n --> src/lib.rs:3:5"),
        asst("analysis", "Look at src/lib.rs around line 3."),
        call("read", {"filePath": "/repo/src/lib.rs"}),
        result("read", "Error: ENOENT: no such file or directory"),
        asst("final", "The test fails because `x` is undefined at src/lib.rs:3 — déclarez-la d'abord 🚀."),
        user("Fix it please. 日本語もOK?"),
        asst("analysis", "Edit the file to define x."),
        call("bash", {"command": "sed -i 's/x/1/' src/lib.rs && cargo test"}),
        result("bash", "test result: ok. 3 passed; 0 failed\n\n\n   "),
        asst("final", "Fixed: `x` replaced with `1`, all 3 tests pass.\n\n```rust\nfn main() {}\n```"),
    ],
    "ends_with_call": [
        system(),
        developer(None, [tool("bash", "Run a shell command.", BASH)]),
        user("List files"),
        asst("analysis", "Use ls."),
        call("bash", {"command": "ls -la"}),
    ],
    "keep_analysis_between_finals": [
        system(),
        user("first"),
        asst("analysis", "thinking 1"),
        asst("final", "answer 1"),
        user("second"),
        asst("analysis", "thinking 2"),
        asst("final", "answer 2"),
    ],
    "special_spelling_in_text": [system(), user("Print the literal <|end|> and <|start|>assistant please"), asst("final", "Here: <|end|> <|call|>  trailing spaces   ")],
}


def to_harmony(m):
    role = Role(m["role"])
    c = m["content"]
    if isinstance(c, str):
        content = TextContent(text=c)
    elif m["role"] == "system":
        s = SystemContent.new().with_model_identity(c["model_identity"])
        s = s.with_reasoning_effort(ReasoningEffort(c["reasoning_effort"].capitalize()))
        s = s.with_knowledge_cutoff(c["knowledge_cutoff"])
        if c.get("conversation_start_date"):
            s = s.with_conversation_start_date(c["conversation_start_date"])
        content = s
    else:
        d = DeveloperContent.new()
        if c.get("instructions") is not None:
            d = d.with_instructions(c["instructions"])
        if c.get("tools"):
            d = d.with_function_tools([ToolDescription.new(t["name"], t["description"], t.get("parameters")) for t in c["tools"]])
        content = d
    author = Author.new(role, m["name"]) if m.get("name") else Author(role=role)
    msg = Message.from_author_and_content(author, content)
    if m.get("channel"):
        msg = msg.with_channel(m["channel"])
    if m.get("recipient"):
        msg = msg.with_recipient(m["recipient"])
    if m.get("content_type"):
        msg = msg.with_content_type(m["content_type"])
    return msg


def from_harmony(m):
    out = {"role": m.author.role.value}
    if m.author.name:
        out["name"] = m.author.name
    for k in ("channel", "recipient", "content_type"):
        v = getattr(m, k)
        if v is not None:
            out[k] = v
    out["content"] = "".join(c.text for c in m.content)
    return out


CALL_HEADER = re.compile(r"<\|start\|>assistant to=(\S+)<\|channel\|>(\w+)")


def model_order_text(text):
    """Move assistant recipients after the channel, as gpt-oss writes them."""
    return CALL_HEADER.sub(lambda mt: f"<|start|>assistant<|channel|>{mt.group(2)} to={mt.group(1)}", text)


def encode_all(text):
    return ENC.encode(text, allowed_special="all")


def case(name, msgs):
    conv = Conversation.from_messages([to_harmony(m) for m in msgs])
    nodrop = ENC.render_conversation(conv, NODROP)
    out = {
        "name": name,
        "messages": msgs,
        "render_drop": ENC.render_conversation(conv, DROP),
        "render_nodrop": nodrop,
        "training": ENC.render_conversation_for_training(conv, NODROP),
        "completion": ENC.render_conversation_for_completion(conv, Role.ASSISTANT, DROP),
        "parsed_nodrop": [from_harmony(m) for m in ENC.parse_messages_from_completion_tokens(nodrop)],
    }
    if name != "special_spelling_in_text":
        text = model_order_text(ENC.decode_utf8(nodrop))
        ids = encode_all(text)
        out["model_order"] = {
            "text": text,
            "ids": ids,
            "parsed": [from_harmony(m) for m in ENC.parse_messages_from_completion_tokens(ids)],
        }
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        if last_user + 1 < len(msgs):
            prompt = Conversation.from_messages([to_harmony(m) for m in msgs[: last_user + 1]])
            prompt_text = model_order_text(ENC.decode_utf8(ENC.render_conversation_for_completion(prompt, Role.ASSISTANT, NODROP)))
            assert text.startswith(prompt_text), name
            gen = encode_all(text[len(prompt_text):])
            out["generated"] = {
                "start": last_user + 1,
                "ids": gen,
                "parsed": [from_harmony(m) for m in ENC.parse_messages_from_completion_tokens(gen, Role.ASSISTANT)],
            }
    return out


def check_samples(path):
    bad = 0
    n = 0
    with open(path) as f:
        for line in f:
            s = json.loads(line)
            n += 1
            parsed = [from_harmony(m) for m in ENC.parse_messages_from_completion_tokens(s["input_ids"])]
            want = s["messages"]
            if len(parsed) != len(want):
                print(f"{s['id']}: {len(parsed)} messages parsed, {len(want)} in sample")
                bad += 1
                continue
            for p, w in zip(parsed, want):
                for k in ("role", "channel", "recipient", "content_type"):
                    if p.get(k) != w.get(k):
                        print(f"{s['id']}: {k} {p.get(k)!r} != {w.get(k)!r}")
                        bad += 1
                if isinstance(w["content"], str) and p["content"] != w["content"]:
                    print(f"{s['id']}: content differs for {w['role']}")
                    bad += 1
    print(f"{n} samples checked, {bad} mismatches")
    return 1 if bad else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-samples":
        sys.exit(check_samples(sys.argv[2]))
    cases = [case(n, m) for n, m in CONVERSATIONS.items()]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/gen_harmony_fixtures.py", "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} conversations")


if __name__ == "__main__":
    main()
