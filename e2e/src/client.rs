//! A line-oriented TLS client of the chat protocol that fails the test on
//! timeouts and on lines that are not the protocol's.

use crate::WAIT;
use shared::line::ServerLine;
use shared::tls::Trust;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// `line` as a [`ServerLine`]; fails the test if it is not one.
pub fn parse(line: &str) -> ServerLine {
    ServerLine::parse(line).unwrap_or_else(|e| panic!("{e}"))
}

/// A line-oriented TLS client that fails the test on timeouts.
///
/// It skips `SYS` notices (which arrive whenever anyone comes or goes)
/// unless [`Client::with_sys`] asks for them, and `TOKEN` lines, keeping
/// the last token for [`Client::token`].
pub struct Client {
    lines: Lines<BufReader<ReadHalf<TlsStream<TcpStream>>>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    sys: bool,
    token: Option<(String, u64)>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, trust: &Trust) -> std::io::Result<Client> {
        Self::connect_from(addr, None, trust).await
    }

    /// As [`Client::connect`], from source address `from` (another
    /// loopback address, for limits per address).
    pub async fn connect_from(
        addr: SocketAddr,
        from: Option<std::net::IpAddr>,
        trust: &Trust,
    ) -> std::io::Result<Client> {
        let cfg = shared::tls::client_config(trust).map_err(std::io::Error::other)?;
        let tcp = match from {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((ip, 0).into())?;
                socket.connect(addr).await?
            }
        };
        let name = shared::tls::server_name("localhost").unwrap();
        let tls = TlsConnector::from(Arc::clone(&cfg))
            .connect(name, tcp)
            .await?;
        let (rd, wr) = tokio::io::split(tls);
        Ok(Client {
            lines: BufReader::new(rd).lines(),
            wr,
            sys: false,
            token: None,
        })
    }

    /// Shows `SYS` notices from the next line on.
    pub fn with_sys(mut self) -> Client {
        self.sys = true;
        self
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
        self.wr.flush().await.unwrap();
    }

    /// The next line; `None` at end of stream.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("timed out waiting for a line")
                .ok()
                .flatten()?;
            match parse(&line) {
                ServerLine::Token { token, expires } => self.token = Some((token, expires)),
                ServerLine::Sys { .. } if !self.sys => {}
                _ => return Some(line),
            }
        }
    }

    pub async fn line(&mut self) -> String {
        self.next().await.expect("connection closed")
    }

    /// The next line, parsed.
    pub async fn parsed(&mut self) -> ServerLine {
        parse(&self.line().await)
    }

    pub async fn expect(&mut self, want: &str) {
        assert_eq!(self.line().await, want);
    }

    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with(prefix),
            "expected {prefix:?}…, got {line:?}"
        );
        line
    }

    /// Skips lines until one satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line().await;
            if pred(&line) {
                return line;
            }
        }
    }

    /// Skips lines until one satisfies `pred`; returns it parsed.
    pub async fn until_line(&mut self, pred: impl Fn(&ServerLine) -> bool) -> ServerLine {
        loop {
            let line = self.parsed().await;
            if pred(&line) {
                return line;
            }
        }
    }

    /// Skips lines until a room line (`MSG`).
    pub async fn msg(&mut self) -> ServerLine {
        self.until_line(|l| matches!(l, ServerLine::Msg { .. }))
            .await
    }

    /// Sends a command and returns the lines up to and including its final
    /// `OK`/`ERR` line.
    pub async fn command(&mut self, line: &str) -> Vec<String> {
        self.send(line).await;
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let last = parse(&l).is_final();
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    /// Sends a command and returns its final line, which must be the only
    /// one.
    pub async fn ask(&mut self, line: &str) -> String {
        let mut lines = self.command(line).await;
        assert_eq!(lines.len(), 1, "{line}: {lines:?}");
        lines.pop().unwrap()
    }

    /// The last resume token (`TOKEN <token> <expires-ms>`) seen, and its
    /// expiry.
    pub fn token(&self) -> Option<(String, u64)> {
        self.token.clone()
    }

    /// `RESUME <user> <token>`: the lines up to its final one (`OK LOGIN`
    /// or `ERR`); the token it gives is [`Client::token`] then.
    pub async fn resume(&mut self, user: &str, token: &str) -> Vec<String> {
        self.command(&format!("RESUME {user} {token}")).await
    }

    /// Waits for the server to close the connection.
    pub async fn closed(&mut self) {
        while self.next().await.is_some() {}
    }
}
