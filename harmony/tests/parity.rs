//! osstune-harmony vs openai-harmony: fixtures/harmony/conversations.json is written by
//! scripts/gen_harmony_fixtures.py with OpenAI's implementation; every token id must match.

use osstune_harmony::{
    parse_messages, Message, RecipientPlacement, RenderOptions, Renderer, Role, Tokenizer,
};
use serde_json::Value;

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/harmony/conversations.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Report the first differing position with both sides decoded, to make failures readable.
fn assert_same(tok: &Tokenizer, case: &str, what: &str, got: &[u32], want: &[u32]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(8);
    panic!(
        "{case}/{what}: first difference at token {at} (len {} vs {})\n ours:   {:?}\n theirs: {:?}",
        got.len(),
        want.len(),
        tok.decode(&got[lo..(at + 8).min(got.len())]).unwrap(),
        tok.decode(&want[lo..(at + 8).min(want.len())]).unwrap(),
    );
}

const DROP: RenderOptions = RenderOptions {
    auto_drop_analysis: true,
    recipient_placement: RecipientPlacement::BeforeChannel,
};
const NODROP: RenderOptions = RenderOptions {
    auto_drop_analysis: false,
    recipient_placement: RecipientPlacement::BeforeChannel,
};
const MODEL: RenderOptions = RenderOptions {
    auto_drop_analysis: false,
    recipient_placement: RecipientPlacement::AfterChannel,
};

#[test]
fn renders_like_openai_harmony() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let r = Renderer::new(&tok);
    let cases = fixtures();
    assert!(cases.len() >= 7);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let msgs = messages(&c["messages"]);
        let got = r.render_conversation(&msgs, DROP).unwrap();
        assert_same(&tok, name, "render_drop", &got, &ids(&c["render_drop"]));
        let got = r.render_conversation(&msgs, NODROP).unwrap();
        assert_same(&tok, name, "render_nodrop", &got, &ids(&c["render_nodrop"]));
        let got = r.render_for_training(&msgs, NODROP).unwrap().ids;
        assert_same(&tok, name, "training", &got, &ids(&c["training"]));
        let got = r.render_for_completion(&msgs, DROP).unwrap();
        assert_same(&tok, name, "completion", &got, &ids(&c["completion"]));
    }
}

#[test]
fn training_ends_with_return_only_after_final() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let r = Renderer::new(&tok);
    for c in fixtures() {
        let msgs = messages(&c["messages"]);
        let t = r.render_for_training(&msgs, NODROP).unwrap().ids;
        let last = msgs.last().unwrap();
        let want = if last.role == Role::Assistant && last.channel.as_deref() == Some("final") {
            200002
        } else if last.role == Role::Assistant && last.recipient.is_some() {
            200012
        } else {
            200007
        };
        assert_eq!(*t.last().unwrap(), want, "{}", c["name"]);
    }
}

#[test]
fn model_order_rendering_matches_text_encoding() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let r = Renderer::new(&tok);
    let mut n = 0;
    for c in fixtures() {
        let Some(mo) = c.get("model_order") else {
            continue;
        };
        let name = c["name"].as_str().unwrap();
        let msgs = messages(&c["messages"]);
        let got = r.render_conversation(&msgs, MODEL).unwrap();
        assert_same(&tok, name, "model_order", &got, &ids(&mo["ids"]));
        assert_eq!(tok.decode(&got).unwrap(), mo["text"].as_str().unwrap());
        // Our own text encoding with specials allowed gives the same ids as openai-harmony's.
        let enc = tok.encode(mo["text"].as_str().unwrap(), true).unwrap();
        assert_same(&tok, name, "encode(text)", &enc, &ids(&mo["ids"]));
        n += 1;
    }
    assert!(n >= 5);
}

fn parsed_eq(name: &str, got: &[Message], want: &Value) {
    let want = messages(want);
    assert_eq!(got.len(), want.len(), "{name}: message count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{name}: message {i}");
    }
}

#[test]
fn parses_like_openai_harmony() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let mut generated = 0;
    for c in fixtures() {
        let name = c["name"].as_str().unwrap();
        let got = parse_messages(&tok, &ids(&c["render_nodrop"]), None).unwrap();
        parsed_eq(name, &got, &c["parsed_nodrop"]);
        if let Some(mo) = c.get("model_order") {
            let got = parse_messages(&tok, &ids(&mo["ids"]), None).unwrap();
            parsed_eq(name, &got, &mo["parsed"]);
        }
        if let Some(g) = c.get("generated") {
            let got = parse_messages(&tok, &ids(&g["ids"]), Some(Role::Assistant)).unwrap();
            parsed_eq(name, &got, &g["parsed"]);
            // The generated messages are the conversation's own messages from `start` on.
            let start = g["start"].as_u64().unwrap() as usize;
            let msgs = messages(&c["messages"]);
            assert_eq!(got, msgs[start..].to_vec(), "{name}: generated vs source");
            generated += 1;
        }
    }
    assert!(generated >= 3);
}
