//! The full-screen interface: message pane, status line, input line.

use crate::conn::{self, Error, Net};
use crate::input::Input;
use crate::model::{self, Entry, Kind, Model, State};
use crate::plain::KEEPALIVE;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::{DefaultTerminal, Frame};
use shared::tls::Trust;
use std::time::Duration;
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthChar;

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
) -> Result<(), Error> {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    tokio::spawn(conn::keep_open(servers, trust, login, out_rx, net_tx));
    // Restores the terminal on panic too.
    let mut terminal = ratatui::try_init()?;
    let (key_tx, key_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if key_tx.send(ev).is_err() {
                break;
            }
        }
    });
    let mut ui = Ui {
        model: Model::new(user),
        input: Input::default(),
        scroll: 0,
        rows: 0,
        out: out_tx,
    };
    ui.model.notice(now(), "connecting... (Ctrl-C quits)");
    let result = ui.run(&mut terminal, net_rx, key_rx).await;
    ratatui::restore();
    result
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Ui {
    model: Model,
    input: Input,
    /// Rows scrolled back from the bottom of the message pane.
    scroll: usize,
    /// Rows of the message pane at the last frame.
    rows: usize,
    out: mpsc::UnboundedSender<String>,
}

enum Step {
    Go,
    Quit,
}

impl Ui {
    async fn run(
        &mut self,
        terminal: &mut DefaultTerminal,
        mut net: mpsc::UnboundedReceiver<Net>,
        mut keys: mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), Error> {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        let mut typed = false;
        let mut quit_by: Option<tokio::time::Instant> = None;
        loop {
            terminal.draw(|f| self.draw(f))?;
            let quit_timer = async {
                match quit_by {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = net.recv() => {
                    let Some(ev) = ev else { return Ok(()) };
                    self.net(ev);
                    // Everything that is in already, before the next frame.
                    while let Ok(ev) = net.try_recv() {
                        self.net(ev);
                    }
                    if self.model.quitting && matches!(self.model.state, State::Closed(_)) {
                        return Ok(());
                    }
                }
                key = keys.recv() => {
                    let Some(key) = key else { return Ok(()) };
                    if let Event::Key(key) = key {
                        typed = true;
                        if let Step::Quit = self.key(key) {
                            if !self.model.can_send() {
                                return Ok(());
                            }
                            quit_by.get_or_insert(tokio::time::Instant::now() + QUIT_WAIT);
                        }
                    }
                }
                _ = keepalive.tick() => {
                    if !std::mem::take(&mut typed) && self.model.can_send() {
                        self.model.pinged();
                        let _ = self.out.send("/ping".into());
                    }
                }
                _ = quit_timer => return Ok(()),
            }
        }
    }

    fn net(&mut self, ev: Net) {
        match ev {
            Net::Connected(server) => self.model.connected(now(), &server),
            Net::Line(line) => {
                for line in self.model.on_line(now(), &line) {
                    let _ = self.out.send(line);
                }
            }
            Net::Lost { why, retry } => {
                let retry = retry.map(|(n, d)| (n, d.as_millis() as u64));
                self.model.lost(now(), &why, retry);
            }
        }
    }

    fn key(&mut self, key: KeyEvent) -> Step {
        if key.kind == KeyEventKind::Release {
            return Step::Go;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let page = self.rows.saturating_sub(1).max(1);
        match key.code {
            KeyCode::Char('c') if ctrl => return self.quit(),
            KeyCode::Char('d') if ctrl && self.input.text().is_empty() => return self.quit(),
            KeyCode::Char('d') if ctrl => self.input.delete(),
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char('u') if ctrl => self.input.kill_before(),
            KeyCode::Char('k') if ctrl => self.input.kill_after(),
            KeyCode::Char('w') if ctrl => self.input.kill_word(),
            KeyCode::Char('l') if ctrl => self.scroll = 0,
            KeyCode::Char(c) if !ctrl => self.input.insert(c),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::Up => self.input.older(),
            KeyCode::Down => self.input.newer(),
            KeyCode::PageUp => self.scroll += page,
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Tab => {
                let choices = self.input.complete(&self.model);
                if !choices.is_empty() {
                    self.model.notice(now(), choices.join(" "));
                }
            }
            KeyCode::Enter => {
                if !self.model.can_send() {
                    // Kept in the input line, to be sent once connected.
                    self.model.submit(now(), &self.input.text());
                    return Step::Go;
                }
                let line = self.input.take();
                if let Some(line) = self.model.submit(now(), &line) {
                    let _ = self.out.send(line);
                    self.scroll = 0;
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
            let _ = self.out.send("/quit".into());
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
        self.draw_pane(f, pane);
        f.render_widget(
            Paragraph::new(status_line(&self.model, self.scroll))
                .style(Style::new().bg(Color::Blue).fg(Color::White)),
            status,
        );
        self.draw_input(f, input);
    }

    fn draw_pane(&mut self, f: &mut Frame, area: Rect) {
        let width = area.width.max(1) as usize;
        let height = area.height as usize;
        let rows: Vec<Line> = self
            .model
            .entries
            .iter()
            .flat_map(|e| wrap(entry_line(&self.model, e), width))
            .collect();
        // Scrolled back: new rows below do not move what is shown.
        if self.scroll > 0 && rows.len() > self.rows {
            self.scroll += rows.len() - self.rows;
        }
        self.rows = rows.len();
        self.scroll = self.scroll.min(rows.len().saturating_sub(height));
        let end = rows.len() - self.scroll;
        let start = end.saturating_sub(height);
        let shown: Vec<Line> = rows[start..end].to_vec();
        f.render_widget(Paragraph::new(shown), area);
    }

    fn draw_input(&self, f: &mut Frame, area: Rect) {
        let prompt = format!("[#{}] ", self.model.room);
        let text: Vec<char> = self.input.text().chars().collect();
        let room = (area.width as usize).saturating_sub(prompt.chars().count() + 1);
        // Scrolled sideways so that the cursor stays in sight.
        let skip = self.input.cursor().saturating_sub(room);
        let visible: String = text.iter().skip(skip).take(room + 1).collect();
        let line = Line::from(vec![Span::raw(prompt.clone()).bold(), Span::raw(visible)]);
        f.render_widget(Paragraph::new(line), area);
        let x = area.x + (prompt.chars().count() + self.input.cursor() - skip) as u16;
        f.set_cursor_position(Position::new(x.min(area.right().saturating_sub(1)), area.y));
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
fn entry_line(m: &Model, e: &Entry) -> Line<'static> {
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
fn wrap(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
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
