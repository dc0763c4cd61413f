//! The input line: editing, history of lines sent, Tab completion.

use crate::model::{Model, COMMANDS};

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
}

impl Input {
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn cursor(&self) -> usize {
        self.cursor
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

    /// Tab: completes the word before the cursor (a command, a room or a
    /// user, by where it stands). Returns the candidates when there are
    /// several, to be shown.
    pub fn complete(&mut self, model: &Model) -> Vec<String> {
        let before: String = self.chars[..self.cursor].iter().collect();
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        let first = before
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (prefix, word) = match word.strip_prefix('@') {
            Some(w) => ("@", w),
            None => ("", word),
        };
        let candidates: Vec<String> = if start == 0 && word.starts_with('/') {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else if start > 0 && matches!(first.as_str(), "/join" | "/who") {
            model.rooms.iter().cloned().collect()
        } else {
            let mut users: Vec<String> = model.users.iter().cloned().collect();
            users.extend(model.subscriptions.iter().cloned());
            users.retain(|u| *u != model.user);
            users
        };
        let mut matches: Vec<String> = candidates
            .into_iter()
            .filter(|c| c.starts_with(word))
            .collect();
        matches.sort();
        matches.dedup();
        let Some(first_match) = matches.first() else {
            return Vec::new();
        };
        let common = matches.iter().fold(first_match.clone(), |acc, m| {
            acc.chars()
                .zip(m.chars())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect()
        });
        let mut replacement = format!("{prefix}{common}");
        if matches.len() == 1 {
            // Like irssi: a name first on a line of text addresses someone.
            let addressed = start == 0 && !word.starts_with('/') && prefix.is_empty();
            replacement.push_str(if addressed { ": " } else { " " });
        }
        let start_chars = before[..start].chars().count();
        let after: Vec<char> = self.chars[self.cursor..].to_vec();
        self.chars.truncate(start_chars);
        self.chars.extend(replacement.chars());
        self.cursor = self.chars.len();
        self.chars.extend(after);
        if matches.len() > 1 {
            matches
        } else {
            Vec::new()
        }
    }
}
