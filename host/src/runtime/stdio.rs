//! Guest stdout and stderr, captured line by line into the task's log.
//!
//! Writes never block the guest: complete lines go through a channel to a forwarder that calls
//! [`TaskServices::log`]. Each stream is capped in bytes per run; past the cap one notice is
//! logged and the rest is dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::LogLevel;
use super::services::TaskServices;

/// Longest line kept; longer ones are cut.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One captured stream (stdout or stderr) of one run.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<OutputState>>,
}

struct OutputState {
    level: LogLevel,
    prefix: &'static str,
    services: Arc<dyn TaskServices>,
    partial: Vec<u8>,
    budget: usize,
    truncated: bool,
    sender: Option<mpsc::UnboundedSender<String>>,
    forwarder: Option<JoinHandle<()>>,
}

impl GuestOutput {
    pub fn new(
        services: Arc<dyn TaskServices>,
        level: LogLevel,
        prefix: &'static str,
        budget: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(OutputState {
                level,
                prefix,
                services,
                partial: Vec::new(),
                budget,
                truncated: false,
                sender: None,
                forwarder: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs what is left of an unterminated last line and waits until every line is logged.
    pub async fn finish(&self) {
        let forwarder = {
            let mut state = self.state();
            if !state.partial.is_empty() {
                let line = std::mem::take(&mut state.partial);
                state.send_line(&line);
            }
            state.sender = None;
            state.forwarder.take()
        };
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
    }
}

impl OutputState {
    fn write(&mut self, mut buf: &[u8]) {
        if self.truncated {
            return;
        }
        if buf.len() > self.budget {
            buf = &buf[..self.budget];
            self.truncated = true;
        }
        self.budget -= buf.len();
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            if let Some(line) = chunk.strip_suffix(b"\n") {
                self.partial.extend_from_slice(line);
                let line = std::mem::take(&mut self.partial);
                self.send_line(&line);
            } else {
                self.partial.extend_from_slice(chunk);
                if self.partial.len() >= MAX_LINE_BYTES {
                    self.split_long_line();
                }
            }
        }
        if self.truncated {
            self.send_text(format!(
                "{}: output limit reached; the rest is not logged",
                self.prefix
            ));
        }
    }

    /// Logs the first part of an overlong line. It is masked first, and the part that could
    /// be the start of a secret the next write completes stays in `partial`.
    fn split_long_line(&mut self) {
        let line = std::mem::take(&mut self.partial);
        let masked = self.services.redact(&String::from_utf8_lossy(&line));
        let keep = self
            .services
            .longest_secret()
            .saturating_sub(1)
            .min(MAX_LINE_BYTES / 2);
        let mut cut = masked.len().saturating_sub(keep);
        while !masked.is_char_boundary(cut) {
            cut -= 1;
        }
        self.partial = masked.as_bytes()[cut..].to_vec();
        self.send_masked(&masked[..cut]);
    }

    /// Logs one line, masked first and then, past [`MAX_LINE_BYTES`], in pieces: no piece
    /// can hold part of a secret, and nothing of the line is lost.
    fn send_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = self.services.redact(&String::from_utf8_lossy(line));
        self.send_masked(&text);
    }

    /// Logs already-masked text, in pieces of at most [`MAX_LINE_BYTES`].
    fn send_masked(&mut self, text: &str) {
        let mut rest = text;
        loop {
            let mut cut = rest.len().min(MAX_LINE_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            self.send_text(format!("{}: {piece}", self.prefix));
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
    }

    fn send_text(&mut self, text: String) {
        let sender = self.sender.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let services = self.services.clone();
            let level = self.level;
            self.forwarder = Some(tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    services.log(level, line).await;
                }
            }));
            tx
        });
        // The forwarder only stops once every sender is gone.
        let _ = sender.send(text);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.state().write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
