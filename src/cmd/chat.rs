//! `osstune chat`: an interactive multi-turn loop over stdin, one line per user message.
//!
//! History follows Harmony conventions: earlier turns keep the user message and the
//! assistant's `final` answer only (analysis is dropped once answered, as openai-harmony's
//! `auto_drop_analysis` does), so each turn re-renders system + history + the new message.
//! `/reset` forgets the history, `/exit` (or end of input) quits. Works with piped stdin.

use super::generate::{BaseCheck, ModelArgs, Session};
use anyhow::{Context, Result};
use osstune_harmony::Message;
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: ModelArgs,
    #[command(flatten)]
    pub base: BaseCheck,
}

pub fn run(args: Args) -> Result<()> {
    let s = Session::open_with(&args.common, args.base)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("osstune chat: type a message; /reset clears the history, /exit quits.");
    }
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                if !s.args.json {
                    eprintln!("[history cleared]");
                }
                continue;
            }
            _ => {}
        }
        history.push(Message::user(text));
        let prompt = s.completion_prompt(&history)?;
        if prompt.len() + s.args.max_tokens > s.context {
            // Not fatal in a conversation: the message is dropped and the chat goes on.
            history.pop();
            eprintln!(
                "error: the conversation has {} tokens; with --max-tokens {} that exceeds the \
                 context of {} tokens: /reset the history or send a shorter message",
                prompt.len(),
                s.args.max_tokens,
                s.context
            );
            continue;
        }
        let turn = s.run_turn(&prompt)?;
        match turn.final_text() {
            Some(answer) => history.push(Message::assistant("final", answer)),
            None if !s.args.json => {
                eprintln!("[no final answer this turn: only your message stays in the history]")
            }
            None => {}
        }
        if s.args.json {
            let mut v = turn.json(&s);
            v["history_messages"] = history.len().into();
            println!("{}", serde_json::to_string(&v)?);
        }
    }
    Ok(())
}
