//! The full-screen interface: message pane, status line, input line.

use crate::conn::{self, Error, Net};
use crate::e2e::E2e;
use crate::input::Input;
use crate::model::{self, Entry, Kind, Model, State};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::{DefaultTerminal, Frame};
use shared::tls::Trust;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Nick colours: a name always gets the same one.
const PALETTE: [Color; 12] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightYellow,
    Color::LightBlue,
    Color::LightMagenta,
    Color::LightCyan,
];

/// How long a `/quit` waits for the server's `BYE quit`.
const QUIT_WAIT: Duration = Duration::from_secs(3);

pub async fn run(
    servers: Vec<String>,
    trust: Trust,
    user: &str,
    login: String,
    e2e: E2e,
    balance: bool,
) -> Result<(), Error> {
    let (out_tx, out_rx) = mpsc::channel(conn::QUEUE);
    let (net_tx, net_rx) = mpsc::channel(conn::QUEUE);
    let mut timing = conn::Timing::default();
    if !balance {
        timing.edges_every = None;
    }
    tokio::spawn(conn::keep_open(
        servers, trust, login, timing, out_rx, net_tx,
    ));
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Restores the terminal on panic too.
    let mut terminal = ratatui::try_init()?;
    let (key_tx, key_rx) = mpsc::channel(conn::QUEUE);
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if key_tx.blocking_send(ev).is_err() {
                break;
            }
        }
    });
    let mut ui = Ui {
        model: Model::new(user).with_e2e(e2e),
        input: Input::default(),
        pane: Pane::default(),
        out: out_tx,
    };
    ui.model.notice(now(), "connecting... (Ctrl-C quits)");
    let result = tokio::select! {
        result = ui.run(&mut terminal, net_rx, key_rx) => result,
        _ = term.recv() => Ok(()),
        _ = hangup.recv() => Ok(()),
    };
    ratatui::restore();
    result
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Ui {
    model: Model,
    input: Input,
    pane: Pane,
    out: mpsc::Sender<String>,
}

enum Step {
    Go,
    Quit,
}

impl Ui {
    async fn run(
        &mut self,
        terminal: &mut DefaultTerminal,
        mut net: mpsc::Receiver<Net>,
        mut keys: mpsc::Receiver<Event>,
    ) -> Result<(), Error> {
        let mut quit_by: Option<tokio::time::Instant> = None;
        // Closed for good, the client stays until the user quits.
        let mut open = true;
        loop {
            terminal.draw(|f| self.draw(f))?;
            let quit_timer = async {
                match quit_by {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = net.recv(), if open => {
                    let Some(ev) = ev else {
                        open = false;
                        continue;
                    };
                    self.net(ev)?;
                    // Everything that is in already, before the next frame.
                    while let Ok(ev) = net.try_recv() {
                        self.net(ev)?;
                    }
                    if self.model.quitting && matches!(self.model.state, State::Closed(_)) {
                        return Ok(());
                    }
                }
                key = keys.recv() => {
                    let Some(key) = key else { return Ok(()) };
                    if let Event::Key(key) = key {
                        if let Step::Quit = self.key(key) {
                            if !self.model.can_send() {
                                return Ok(());
                            }
                            quit_by.get_or_insert(tokio::time::Instant::now() + QUIT_WAIT);
                        }
                    }
                }
                _ = quit_timer => return Ok(()),
            }
        }
    }

    fn net(&mut self, ev: Net) -> Result<(), Error> {
        match ev {
            Net::Connected(server) => self.model.connected(now(), &server),
            Net::Line(line) => {
                for line in self.model.on_line(now(), &line) {
                    self.send(line);
                }
            }
            Net::Notice(text) => self.model.notice(now(), text),
            Net::Lost { why, retry } => {
                let retry = retry.map(|(n, d)| (n, d.as_millis() as u64));
                self.model.lost(now(), &why, retry);
            }
            Net::Refused(why) => return Err(format!("login failed: {why}").into()),
        }
        Ok(())
    }

    /// Queues `line` for the connection; says so when it cannot take it.
    fn send(&mut self, line: String) {
        if let Err(mpsc::error::TrySendError::Full(line)) = self.out.try_send(line) {
            let text = format!("too many lines waiting for the connection: not sent: {line}");
            self.model.notice(now(), text);
        }
    }

    fn key(&mut self, key: KeyEvent) -> Step {
        if key.kind == KeyEventKind::Release {
            return Step::Go;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if key.code != KeyCode::Tab {
            self.input.accept();
        }
        match key.code {
            KeyCode::Char('c') if ctrl => return self.quit(),
            KeyCode::Char('d') if ctrl && self.input.text().is_empty() => return self.quit(),
            KeyCode::Char('d') if ctrl => self.input.delete(),
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char('u') if ctrl => self.input.kill_before(),
            KeyCode::Char('k') if ctrl => self.input.kill_after(),
            KeyCode::Char('w') if ctrl => self.input.kill_word(),
            KeyCode::Char('l') if ctrl => self.pane.scroll = 0,
            KeyCode::Char(c) if !ctrl => self.input.insert(c),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::Up => self.input.older(),
            KeyCode::Down => self.input.newer(),
            KeyCode::PageUp => self.pane.page_up(),
            KeyCode::PageDown => self.pane.page_down(),
            KeyCode::Tab => self.input.complete(&self.model),
            KeyCode::Enter => {
                if !self.model.can_send() {
                    // Kept in the input line, to be sent once connected.
                    self.model.submit(now(), &self.input.text());
                    return Step::Go;
                }
                let line = self.input.take();
                for line in self.model.submit(now(), &line) {
                    self.send(line);
                    self.pane.scroll = 0;
                }
                if self.model.quitting {
                    return Step::Quit;
                }
            }
            _ => {}
        }
        Step::Go
    }

    fn quit(&mut self) -> Step {
        if self.model.can_send() && !self.model.quitting {
            self.model.quitting = true;
            self.send("/quit".into());
        }
        Step::Quit
    }

    fn draw(&mut self, f: &mut Frame) {
        let [pane, status, input] = Layout::vertical([
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let rows = self
            .pane
            .rows(&self.model, pane.width as usize, pane.height as usize);
        f.render_widget(Paragraph::new(rows), pane);
        f.render_widget(
            Paragraph::new(status_line(&self.model, self.pane.scroll))
                .style(Style::new().bg(Color::Blue).fg(Color::White)),
            status,
        );
        self.draw_input(f, input);
    }

    fn draw_input(&self, f: &mut Frame, area: Rect) {
        let prompt = format!("[#{}] ", self.model.room);
        let (visible, cursor) = self
            .input
            .view((area.width as usize).saturating_sub(prompt.width()));
        let x = area.x as usize + prompt.width() + cursor;
        let line = Line::from(vec![Span::raw(prompt).bold(), Span::raw(visible)]);
        f.render_widget(Paragraph::new(line), area);
        let x = (x as u16).min(area.right().saturating_sub(1));
        f.set_cursor_position(Position::new(x, area.y));
    }
}

/// The message pane: the model's entries wrapped into rows, each entry
/// once (again only when the width or the room changes), and how far it
/// is scrolled back.
#[derive(Default)]
pub(crate) struct Pane {
    /// Rows scrolled back from the bottom.
    scroll: usize,
    /// Rows shown at the last frame: a page is one less.
    height: usize,
    /// The rows of each of the model's entries, in order.
    wrapped: VecDeque<Vec<Line<'static>>>,
    /// How many rows `wrapped` holds.
    total: usize,
    /// What `wrapped` is for: the width, the room (messages from other
    /// rooms name theirs), and the model's `pushed` count.
    width: usize,
    room: String,
    pushed: u64,
}

impl Pane {
    fn page(&self) -> usize {
        self.height.saturating_sub(1).max(1)
    }

    pub(crate) fn page_up(&mut self) {
        self.scroll += self.page();
    }

    pub(crate) fn page_down(&mut self) {
        self.scroll = self.scroll.saturating_sub(self.page());
    }

    /// The rows to show in `width` × `height`. Scrolled back, new rows
    /// below do not move what is shown.
    pub(crate) fn rows(&mut self, m: &Model, width: usize, height: usize) -> Vec<Line<'static>> {
        let width = width.max(1);
        let again = width != self.width || m.room != self.room;
        if again {
            self.wrapped.clear();
            self.total = 0;
            self.width = width;
            self.room = m.room.clone();
            self.pushed = m.pushed - m.entries.len() as u64;
        }
        let new = ((m.pushed - self.pushed) as usize).min(m.entries.len());
        for e in m.entries.range(m.entries.len() - new..) {
            let rows = wrap(entry_line(m, e), width);
            self.total += rows.len();
            if self.scroll > 0 && !again {
                self.scroll += rows.len();
            }
            self.wrapped.push_back(rows);
        }
        self.pushed = m.pushed;
        while self.wrapped.len() > m.entries.len() {
            self.total -= self.wrapped.pop_front().map_or(0, |rows| rows.len());
        }
        self.height = height;
        self.scroll = self.scroll.min(self.total.saturating_sub(height));
        let mut shown: Vec<Line<'static>> = self
            .wrapped
            .iter()
            .rev()
            .flat_map(|rows| rows.iter().rev())
            .skip(self.scroll)
            .take(height)
            .cloned()
            .collect();
        shown.reverse();
        shown
    }
}

fn status_line(m: &Model, scroll: usize) -> Line<'static> {
    let mut parts = vec![m.user.clone(), format!("#{}", m.room)];
    parts.push(match (&m.edge, &m.server) {
        (Some(edge), Some(server)) => format!("{edge} ({server})"),
        (None, Some(server)) => server.clone(),
        _ => "-".into(),
    });
    parts.push(m.state.label());
    if !m.subscriptions.is_empty() {
        let subs: Vec<&str> = m.subscriptions.iter().map(String::as_str).collect();
        parts.push(format!("subs: {}", subs.join(",")));
    }
    if scroll > 0 {
        parts.push(format!("scrolled back {scroll} rows (PageDown)"));
    }
    Line::from(format!(" {}", parts.join(" | ")))
}

fn nick(name: &str) -> Style {
    Style::new().fg(PALETTE[model::colour_index(name, PALETTE.len())])
}

/// One entry of the message pane, styled.
pub(crate) fn entry_line(m: &Model, e: &Entry) -> Line<'static> {
    let time = Span::raw(format!("{} ", model::clock(e.ms, &chrono::Local))).dark_gray();
    let mark = Span::raw(if e.own { "»" } else { " " }).bold();
    let text = model::clean(&e.text);
    let who = |name: &str, open: &str, close: &str| {
        let style = if e.own {
            nick(name).add_modifier(Modifier::BOLD)
        } else {
            nick(name)
        };
        Span::styled(format!("{open}{name}{close} "), style)
    };
    let mut spans = vec![time];
    match &e.kind {
        Kind::Msg { room, from } => {
            spans.push(mark);
            if *room != m.room {
                spans.push(Span::raw(format!("#{room} ")).dark_gray());
            }
            spans.push(who(from, "<", ">"));
            spans.push(Span::raw(text));
        }
        Kind::Pub { from } => {
            spans.push(mark);
            spans.push(who(from, "[", "]"));
            spans.push(Span::raw(text).magenta());
        }
        Kind::DmIn { from } => {
            spans.push(mark);
            spans.push(who(from, "*", "*"));
            spans.push(Span::raw(text).yellow());
        }
        Kind::DmOut { to } => {
            spans.push(mark);
            spans.push(Span::raw("-> ").yellow());
            spans.push(who(to, "*", "*"));
            spans.push(Span::raw(text).yellow());
        }
        Kind::Hist { conv, from } => {
            spans.push(mark);
            let conv = if conv.starts_with('@') {
                conv.clone()
            } else {
                format!("#{conv}")
            };
            spans.push(Span::raw(format!("(history {conv}) ")).dark_gray());
            spans.push(who(from, "<", ">"));
            spans.push(Span::raw(text).dark_gray());
        }
        Kind::Sys => spans.push(Span::raw(format!("-!- {text}")).cyan()),
        Kind::Room => spans.push(Span::raw(format!("=== {text}")).green().bold()),
        Kind::Reply => spans.push(Span::raw(format!("--- {text}"))),
        Kind::Error => spans.push(Span::raw(format!("!!! {text}")).red()),
        Kind::Client => spans.push(Span::raw(format!("*** {text}")).blue()),
    }
    Line::from(spans)
}

/// Cuts a line into rows of `width` columns.
pub(crate) fn wrap(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    let mut rows = vec![Line::default()];
    let mut used = 0;
    for span in line.spans {
        let mut piece = String::new();
        for c in span.content.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width && used > 0 {
                let full = std::mem::take(&mut piece);
                rows.last_mut()
                    .unwrap()
                    .push_span(Span::styled(full, span.style));
                rows.push(Line::default());
                used = 0;
            }
            piece.push(c);
            used += w;
        }
        rows.last_mut()
            .unwrap()
            .push_span(Span::styled(piece, span.style));
    }
    rows
}
