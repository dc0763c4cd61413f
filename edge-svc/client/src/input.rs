//! The input line: editing, history of lines sent, Tab completion.

use crate::model::{Model, COMMANDS};
use unicode_width::UnicodeWidthChar;

/// How many lines sent Up and Down go back through.
const HISTORY: usize = 500;

#[derive(Debug, Default)]
pub struct Input {
    chars: Vec<char>,
    /// Position of the cursor, in characters.
    cursor: usize,
    history: Vec<String>,
    /// Which history line is shown while browsing with Up and Down.
    browsing: Option<usize>,
    /// What was typed before browsing began.
    draft: String,
    /// The completion shown, while Tab is pressed again and again.
    cycle: Option<Cycle>,
}

impl Input {
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn set(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
    }

    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
    }

    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
    }

    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.chars.len();
    }

    /// Ctrl-U: deletes everything before the cursor.
    pub fn kill_before(&mut self) {
        self.chars.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Ctrl-K: deletes everything from the cursor on.
    pub fn kill_after(&mut self) {
        self.chars.truncate(self.cursor);
    }

    /// Ctrl-W: deletes the word before the cursor.
    pub fn kill_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.chars[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && self.chars[start - 1] != ' ' {
            start -= 1;
        }
        self.chars.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Enter: the line, now remembered in the history, and an empty input.
    pub fn take(&mut self) -> String {
        let line = self.text();
        if !line.is_empty() && self.history.last() != Some(&line) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(line.clone());
        }
        self.set("");
        self.browsing = None;
        line
    }

    /// Up: the line sent before the one shown.
    pub fn older(&mut self) {
        let at = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = self.text();
                self.history.len() - 1
            }
            Some(i) => i.saturating_sub(1),
        };
        self.browsing = Some(at);
        let line = self.history[at].clone();
        self.set(&line);
    }

    /// Down: the line sent after the one shown, and at the end what was
    /// being typed.
    pub fn newer(&mut self) {
        match self.browsing {
            None => {}
            Some(i) if i + 1 < self.history.len() => {
                self.browsing = Some(i + 1);
                let line = self.history[i + 1].clone();
                self.set(&line);
            }
            Some(_) => {
                self.browsing = None;
                let draft = std::mem::take(&mut self.draft);
                self.set(&draft);
            }
        }
    }

    /// What fits of the line in `cols` terminal columns, scrolled
    /// sideways so that the cursor stays in sight, and the cursor's column
    /// in it. Wide characters (CJK, emoji) take two columns.
    pub fn view(&self, cols: usize) -> (String, usize) {
        let w = |c: &char| c.width().unwrap_or(0);
        // The last column is kept for the cursor at the end of the line.
        let room = cols.saturating_sub(1);
        let mut skip = 0;
        let mut cursor: usize = self.chars[..self.cursor].iter().map(w).sum();
        while cursor > room {
            cursor -= w(&self.chars[skip]);
            skip += 1;
        }
        let mut used = 0;
        let shown = self.chars[skip..]
            .iter()
            .take_while(|c| {
                used += w(c);
                used <= cols
            })
            .collect();
        (shown, cursor)
    }

    /// Any key but Tab: the completion shown is kept as it is.
    pub fn accept(&mut self) {
        self.cycle = None;
    }

    /// Tab: completes the word before the cursor (a command, a room or a
    /// user, by where it stands) with the first match; Tab again right
    /// after replaces it with the next, round and round, as in irssi.
    pub fn complete(&mut self, model: &Model) {
        let cycle = match self.cycle.take() {
            Some(mut c) => {
                c.at = (c.at + 1) % c.matches.len();
                c
            }
            None => match self.matches(model) {
                Some(c) => c,
                None => return,
            },
        };
        let text = format!(
            "{}{}{}",
            cycle.prefix, cycle.matches[cycle.at], cycle.suffix
        );
        let n = text.chars().count();
        self.chars.splice(cycle.start..self.cursor, text.chars());
        self.cursor = cycle.start + n;
        self.cycle = Some(cycle);
    }

    /// What the word before the cursor could be completed to.
    fn matches(&self, model: &Model) -> Option<Cycle> {
        let before: String = self.chars[..self.cursor].iter().collect();
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return None;
        }
        let first = before
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (prefix, word) = match word.strip_prefix('@') {
            Some(w) => ("@", w),
            None => ("", word),
        };
        let command = start == 0 && word.starts_with('/');
        let candidates: Vec<String> = if command {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else if start > 0 && matches!(first.as_str(), "/join" | "/who") {
            model.rooms.iter().cloned().collect()
        } else {
            let mut users: Vec<String> = model.users.iter().cloned().collect();
            users.extend(model.subscriptions.iter().cloned());
            users.retain(|u| *u != model.user);
            users
        };
        // Commands in any case, names as they are (they are
        // case-sensitive).
        let fits = |c: &String| match command {
            true => c.starts_with(&word.to_ascii_lowercase()),
            false => c.starts_with(word),
        };
        let mut matches: Vec<String> = candidates.into_iter().filter(fits).collect();
        matches.sort();
        matches.dedup();
        if matches.is_empty() {
            return None;
        }
        // Like irssi: a name first on a line of text addresses someone.
        let addressed = start == 0 && !command && prefix.is_empty();
        Some(Cycle {
            start: before[..start].chars().count(),
            prefix,
            suffix: if addressed { ": " } else { " " },
            matches,
            at: 0,
        })
    }
}

/// A completion being cycled through with Tab.
#[derive(Debug)]
struct Cycle {
    /// Where the word completed starts, in characters.
    start: usize,
    prefix: &'static str,
    suffix: &'static str,
    matches: Vec<String>,
    /// Which match is shown.
    at: usize,
}
