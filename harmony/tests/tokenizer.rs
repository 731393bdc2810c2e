//! Tokenizer ids (docs/gpt-oss.md §5.1) and the streaming parser's behaviour on partial input.

use osstune_harmony::tokenizer::{self, VOCAB_SIZE};
use osstune_harmony::{
    parse_messages, Event, Message, RenderOptions, Renderer, Role, StreamParser, Tokenizer,
};

#[test]
fn special_ids_follow_the_spec() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let table = [
        ("<|startoftext|>", 199998),
        ("<|endoftext|>", 199999),
        ("<|return|>", 200002),
        ("<|constrain|>", 200003),
        ("<|channel|>", 200005),
        ("<|start|>", 200006),
        ("<|end|>", 200007),
        ("<|message|>", 200008),
        ("<|call|>", 200012),
        ("<|reserved_200013|>", 200013),
        ("<|reserved_201087|>", 201087),
    ];
    for (name, id) in table {
        assert_eq!(tok.special_id(name), Some(id), "{name}");
        assert_eq!(tok.special_name(id), Some(name), "{id}");
    }
    assert_eq!(tok.special_id("<|reserved_201088|>"), None);
    assert!(!tok.is_special(1000));
    assert_eq!(tok.vocab_size(), VOCAB_SIZE);
}

#[test]
fn encode_decode_roundtrip_and_special_handling() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let text = "fn main() { println!(\"héllo 世界 🚀\"); }\n\t  ";
    let ids = tok.encode_ordinary(text).unwrap();
    assert!(ids.iter().all(|&i| i < 199998));
    assert_eq!(tok.decode_utf8(&ids).unwrap(), text);
    // "Hello world" is two o200k tokens.
    assert_eq!(
        tok.encode_ordinary("Hello world").unwrap(),
        vec![13225, 2375]
    );
    let with = tok.encode("a<|end|>b", true).unwrap();
    assert_eq!(with.len(), 3);
    assert_eq!(with[1], tokenizer::END);
    let without = tok.encode("a<|end|>b", false).unwrap();
    assert!(!without.contains(&tokenizer::END));
    assert_eq!(tok.decode(&without).unwrap(), "a<|end|>b");
    // Unknown `<|…|>` spellings are just text.
    let odd = tok.encode("<|nope|><|start|>", true).unwrap();
    assert_eq!(*odd.last().unwrap(), tokenizer::START);
    assert_eq!(tok.decode(&odd).unwrap(), "<|nope|><|start|>");
    assert!(tok.decode(&[300_000]).is_err());
}

#[test]
fn streaming_parser_reports_channel_recipient_and_whole_characters() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let r = Renderer::new(&tok);
    let msgs = vec![
        Message::assistant("analysis", "Think: 🚀🚀 ok"),
        Message::tool_call("bash", "{\"command\":\"ls\"}"),
    ];
    let mut ids = r
        .render_conversation(
            &msgs,
            RenderOptions {
                recipient_placement: osstune_harmony::RecipientPlacement::AfterChannel,
                ..Default::default()
            },
        )
        .unwrap();
    // Drop the leading `<|start|>assistant`: the parser starts after a completion prompt.
    let assistant = tok.encode_ordinary("assistant").unwrap();
    assert_eq!(&ids[1..1 + assistant.len()], assistant.as_slice());
    ids.drain(..1 + assistant.len());
    let mut p = StreamParser::new(&tok, Some(Role::Assistant));
    let mut deltas = String::new();
    let mut saw_call = false;
    for &t in &ids {
        match p.process(t).unwrap() {
            Event::Delta(d) => {
                assert!(!d.contains('\u{FFFD}'), "partial character leaked: {d:?}");
                deltas.push_str(&d);
            }
            Event::HeaderDone if p.current_recipient() == Some("functions.bash") => {
                assert_eq!(p.current_channel(), Some("commentary"));
                assert_eq!(p.current_content_type(), Some("<|constrain|>json"));
                saw_call = true;
            }
            _ => {}
        }
    }
    p.process_eos().unwrap();
    assert!(saw_call);
    assert_eq!(deltas, "Think: 🚀🚀 ok{\"command\":\"ls\"}");
    assert_eq!(p.messages(), msgs.as_slice());
}

#[test]
fn parser_errors_instead_of_panicking() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    // Text before <|start|>.
    let ids = tok
        .encode("hello<|start|>user<|message|>x<|end|>", true)
        .unwrap();
    assert!(parse_messages(&tok, &ids, None).is_err());
    // Unknown role with nothing else in the header.
    let ids = tok
        .encode("<|start|>bogus<|message|>x<|end|>", true)
        .unwrap();
    assert!(parse_messages(&tok, &ids, None).is_err());
    // Stream ends inside a header.
    let ids = tok
        .encode("<|start|>assistant<|channel|>final", true)
        .unwrap();
    assert!(parse_messages(&tok, &ids, None).is_err());
    // Stream ends inside content: the partial message is still returned.
    let ids = tok
        .encode("<|start|>assistant<|channel|>final<|message|>partial", true)
        .unwrap();
    let m = parse_messages(&tok, &ids, None).unwrap();
    assert_eq!(m, vec![Message::assistant("final", "partial")]);
    // Ids outside the vocabulary.
    assert!(parse_messages(&tok, &[tokenizer::START, 999_999], None).is_err());
}
