//! A minimal HTTP/1.1 client over `std::net::TcpStream` for the tests and `osstune bench
//! serve`: one request per connection (`Connection: close`), bodies read whole or as
//! server-sent events line by line. It speaks the wire format directly, so tests see exactly
//! what a client would (status line, headers, `data:` lines).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{bail, Context, Result};

pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
    }

    /// The whole body as text.
    pub fn text(mut self) -> Result<String> {
        let mut body = Vec::new();
        if self.chunked() {
            while let Some(c) = self.next_chunk()? {
                body.extend(c);
            }
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(String::from_utf8(body)?)
    }

    pub fn json(self) -> Result<serde_json::Value> {
        let t = self.text()?;
        serde_json::from_str(&t).with_context(|| format!("response is not JSON: {t:?}"))
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        let mut buf = vec![0; size + 2];
        self.reader.read_exact(&mut buf)?;
        buf.truncate(size);
        Ok((size > 0).then_some(buf))
    }

    /// Server-sent events: the payload of each `data:` line, in order, until the stream ends.
    pub fn events(self) -> Events {
        Events {
            resp: self,
            buf: String::new(),
        }
    }
}

pub struct Events {
    resp: Response,
    buf: String,
}

impl Events {
    /// The next `data:` payload, `None` at the end of the stream.
    pub fn next_data(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..i + 2).collect();
                if let Some(d) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Ok(Some(d.to_string()));
                }
                continue;
            }
            let more = if self.resp.chunked() {
                self.resp.next_chunk()?
            } else {
                let mut b = vec![0; 4096];
                let n = self.resp.reader.read(&mut b)?;
                b.truncate(n);
                (n > 0).then_some(b)
            };
            match more {
                Some(b) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                None => return Ok(None),
            }
        }
    }
}

/// Sends one request; `body` is sent as JSON when given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Response {
        status,
        headers,
        reader,
    })
}

/// POSTs a JSON value.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Result<Response> {
    request(
        addr,
        "POST",
        path,
        headers,
        Some(body.to_string().as_bytes()),
    )
}
