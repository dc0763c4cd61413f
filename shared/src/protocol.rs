//! The client-facing line protocol (see docs/protocol.md): parsing client
//! lines into [`Command`]s and the error codes of `ERR` replies.
//!
//! Parsing is pure: no I/O, no state, so it is tested without sockets.

use crate::identity::IdentityKey;
use std::fmt;

/// Default and maximum `<n>` of `/history`.
pub const HISTORY_DEFAULT: u32 = 20;
pub const HISTORY_MAX: u32 = 500;

/// The room every session starts in.
pub const LOBBY: &str = "lobby";

/// Protocol version announced in `HELLO`.
pub const PROTOCOL_VERSION: &str = "chat/1";

/// Defines [`ErrorCode`] from one list of (variant, wire name).
macro_rules! error_codes {
    ($($variant:ident => $name:literal,)*) => {
        /// The `<code>` of an `ERR <code> <text>` line.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum ErrorCode {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the contract's order.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    AuthRequired => "auth-required",
    BadCredentials => "bad-credentials",
    AlreadyLoggedIn => "already-logged-in",
    AlreadyAuthenticated => "already-authenticated",
    RegistrationClosed => "registration-closed",
    UserExists => "user-exists",
    BadName => "bad-name",
    BadArgs => "bad-args",
    UnknownCommand => "unknown-command",
    NoSuchUser => "no-such-user",
    NotInRoom => "not-in-room",
    LineTooLong => "line-too-long",
    BadEncoding => "bad-encoding",
    RateLimited => "rate-limited",
    TlsRequired => "tls-required",
    Unavailable => "unavailable",
    Internal => "internal",
}

impl std::str::FromStr for ErrorCode {
    type Err = ();

    fn from_str(s: &str) -> Result<ErrorCode, ()> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol error: the code and the short text the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub text: &'static str,
}

impl ProtoError {
    pub const fn new(code: ErrorCode, text: &'static str) -> Self {
        ProtoError { code, text }
    }

    /// The `ERR` line.
    pub fn line(&self) -> crate::line::ServerLine {
        crate::line::ServerLine::err(self.code, self.text)
    }
}

/// Whether `s` is a valid user or room name: `[A-Za-z0-9_-]{1,32}`.
pub fn is_valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whose history `/history` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryTarget {
    /// The current room.
    Room,
    /// The private conversation with a user.
    User(String),
}

/// One parsed client line.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Login {
        user: String,
        password: String,
    },
    Register {
        user: String,
        password: String,
    },
    /// `RESUME <user> <token>`: log in with a resume token.
    Resume {
        user: String,
        token: String,
    },
    Say(String),
    Join(String),
    Leave,
    Rooms,
    Who(Option<String>),
    Subscribe(String),
    Unsubscribe(String),
    Subscriptions,
    Publish(String),
    Msg {
        to: String,
        text: String,
    },
    History {
        target: HistoryTarget,
        n: u32,
    },
    /// `/key set <base64>`: publishes the user's own public key.
    KeySet(IdentityKey),
    /// `/key <user>`: asks for a user's public key.
    Key(String),
    Ping,
    Help,
    Quit,
    Edges,
}

// Hand-written so that a password never reaches a log line.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Login { user, .. } => write!(f, "Login {{ user: {user:?}, password: *** }}"),
            Command::Register { user, .. } => {
                write!(f, "Register {{ user: {user:?}, password: *** }}")
            }
            Command::Resume { user, .. } => write!(f, "Resume {{ user: {user:?}, token: *** }}"),
            Command::Say(t) => f.debug_tuple("Say").field(t).finish(),
            Command::Join(r) => f.debug_tuple("Join").field(r).finish(),
            Command::Leave => f.write_str("Leave"),
            Command::Rooms => f.write_str("Rooms"),
            Command::Who(r) => f.debug_tuple("Who").field(r).finish(),
            Command::Subscribe(u) => f.debug_tuple("Subscribe").field(u).finish(),
            Command::Unsubscribe(u) => f.debug_tuple("Unsubscribe").field(u).finish(),
            Command::Subscriptions => f.write_str("Subscriptions"),
            Command::Publish(t) => f.debug_tuple("Publish").field(t).finish(),
            Command::Msg { to, text } => f
                .debug_struct("Msg")
                .field("to", to)
                .field("text", text)
                .finish(),
            Command::History { target, n } => f
                .debug_struct("History")
                .field("target", target)
                .field("n", n)
                .finish(),
            Command::KeySet(k) => f.debug_tuple("KeySet").field(k).finish(),
            Command::Key(u) => f.debug_tuple("Key").field(u).finish(),
            Command::Ping => f.write_str("Ping"),
            Command::Help => f.write_str("Help"),
            Command::Quit => f.write_str("Quit"),
            Command::Edges => f.write_str("Edges"),
        }
    }
}

const BAD_ARGS: ProtoError = ProtoError::new(ErrorCode::BadArgs, "wrong arguments, see /help");
const BAD_NAME: ProtoError = ProtoError::new(
    ErrorCode::BadName,
    "names are 1-32 characters of A-Z a-z 0-9 _ -",
);

const CONTROL: ProtoError = ProtoError::new(
    ErrorCode::BadEncoding,
    "control characters other than TAB are not allowed",
);

impl Command {
    /// Parses one line (without its terminator). Returns `Ok(None)` for a
    /// line that is to be ignored (empty or only blanks). `LOGIN`,
    /// `REGISTER` and `RESUME` are taken in any case.
    pub fn parse(line: &str) -> Result<Option<Command>, ProtoError> {
        Self::parse_with(line, true)
    }

    /// [`Command::parse`] for a logged-in session: there only the upper-case
    /// `LOGIN`, `REGISTER` and `RESUME` are those commands (answered
    /// `ERR already-authenticated`); `resume the build` or `Login works
    /// now` is chat text, as the contract's `<text>` is.
    pub fn parse_in_session(line: &str) -> Result<Option<Command>, ProtoError> {
        Self::parse_with(line, false)
    }

    fn parse_with(line: &str, any_case: bool) -> Result<Option<Command>, ProtoError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        // A bare CR or an escape sequence passed on to raw clients could
        // show them forged lines or move their cursor.
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(CONTROL);
        }
        if let Some(rest) = line.strip_prefix("//") {
            return Ok(Some(Command::Say(format!("/{rest}"))));
        }
        let Some(body) = line.strip_prefix('/') else {
            let (word, rest) = split_word(line);
            let is = |k: &str| word == k || (any_case && word.eq_ignore_ascii_case(k));
            return Ok(Some(if is("LOGIN") {
                let (user, password) = credentials(rest)?;
                Command::Login { user, password }
            } else if is("REGISTER") {
                let (user, password) = credentials(rest)?;
                Command::Register { user, password }
            } else if is("RESUME") {
                match rest.split(' ').collect::<Vec<_>>().as_slice() {
                    [user, token] if !token.is_empty() => Command::Resume {
                        user: name(user)?,
                        token: token.to_string(),
                    },
                    _ => return Err(BAD_ARGS),
                }
            } else {
                Command::Say(line.to_string())
            }));
        };
        let (word, rest) = split_word(body);
        let word = word.to_ascii_lowercase();
        let args: Vec<&str> = rest.split_whitespace().collect();
        let cmd = match word.as_str() {
            "join" => Command::Join(one_name(&args)?),
            "leave" => no_args(&args, Command::Leave)?,
            "rooms" => no_args(&args, Command::Rooms)?,
            "who" => match args.as_slice() {
                [] => Command::Who(None),
                [room] => Command::Who(Some(name(room)?)),
                _ => return Err(BAD_ARGS),
            },
            "subscribe" => Command::Subscribe(one_name(&args)?),
            "unsubscribe" => Command::Unsubscribe(one_name(&args)?),
            "subscriptions" => no_args(&args, Command::Subscriptions)?,
            "publish" => Command::Publish(text(rest)?),
            "msg" => {
                let (to, text_part) = split_word(rest.trim_start());
                if to.is_empty() {
                    return Err(BAD_ARGS);
                }
                Command::Msg {
                    to: name(to)?,
                    text: text(text_part)?,
                }
            }
            "history" => history(&args)?,
            "key" => match args.as_slice() {
                ["set", key] => Command::KeySet(IdentityKey::parse(key).ok_or(BAD_ARGS)?),
                ["set"] => return Err(BAD_ARGS),
                [user] => Command::Key(name(user)?),
                _ => return Err(BAD_ARGS),
            },
            "ping" => no_args(&args, Command::Ping)?,
            "help" => Command::Help,
            "quit" => Command::Quit,
            "edges" => no_args(&args, Command::Edges)?,
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownCommand,
                    "unknown command, see /help",
                ))
            }
        };
        Ok(Some(cmd))
    }
}

/// Whether a line may be sent before login: `LOGIN`, `REGISTER`,
/// `RESUME`, `/help`, `/ping`, `/quit` and `/edges` (judged by the keyword
/// alone, so that anything else, even malformed, is answered
/// `ERR auth-required`).
pub fn allowed_before_login(line: &str) -> bool {
    let word = split_word(line).0;
    [
        "LOGIN", "REGISTER", "RESUME", "/help", "/ping", "/quit", "/edges",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// Splits off the first word at the first space; the rest keeps everything
/// after that one space.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((w, rest)) => (w, rest),
        None => (s, ""),
    }
}

fn name(s: &str) -> Result<String, ProtoError> {
    if is_valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(BAD_NAME)
    }
}

fn one_name(args: &[&str]) -> Result<String, ProtoError> {
    match args {
        [n] => name(n),
        _ => Err(BAD_ARGS),
    }
}

fn no_args(args: &[&str], cmd: Command) -> Result<Command, ProtoError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(BAD_ARGS)
    }
}

fn text(s: &str) -> Result<String, ProtoError> {
    if s.trim().is_empty() {
        Err(BAD_ARGS)
    } else {
        Ok(s.to_string())
    }
}

/// `<user> <password>`: the password is everything after the one space that
/// follows the user name, and may itself contain spaces.
fn credentials(rest: &str) -> Result<(String, String), ProtoError> {
    let (user, password) = split_word(rest);
    if user.is_empty() || password.is_empty() {
        return Err(BAD_ARGS);
    }
    Ok((name(user)?, password.to_string()))
}

fn history(args: &[&str]) -> Result<Command, ProtoError> {
    let (target, count) = match args {
        [first, rest @ ..] if first.starts_with('@') => {
            (HistoryTarget::User(name(&first[1..])?), rest)
        }
        _ => (HistoryTarget::Room, args),
    };
    let n = match count {
        [] => HISTORY_DEFAULT,
        [n] => match n.parse::<u32>() {
            Ok(n) if n > 0 => n.min(HISTORY_MAX),
            _ => return Err(BAD_ARGS),
        },
        _ => return Err(BAD_ARGS),
    };
    Ok(Command::History { target, n })
}

/// The `/help` text, one `INFO` line each (followed by `OK HELP`).
pub const HELP: &[&str] = &[
    "LOGIN <user> <password>      log in",
    "REGISTER <user> <password>   create an account and log in",
    "RESUME <user> <token>        log in again with the token of a TOKEN line",
    "<text>                       say <text> in your room (//text says /text)",
    "/join <room>                 move to <room>",
    "/leave                       go back to the lobby",
    "/rooms                       list rooms with member counts",
    "/who [<room>]                list members of a room",
    "/subscribe <user>            receive what <user> publishes",
    "/unsubscribe <user>          stop that",
    "/subscriptions               list whom you subscribe to",
    "/publish <text>              send <text> to your subscribers",
    "/msg <user> <text>           private message (queued if offline)",
    "/history [@<user>] [<n>]     recent messages of your room or a conversation",
    "/key set <base64>            publish your public key (end-to-end encryption)",
    "/key <user>                  a user's public key and its fingerprint",
    "/ping                        liveness check",
    "/edges                       list the live edges and their connections",
    "/quit                        log out and close",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Option<Command>, ProtoError> {
        Command::parse(line)
    }

    fn code(line: &str) -> ErrorCode {
        p(line).unwrap_err().code
    }

    #[test]
    fn error_codes_parse_as_they_print() {
        assert_eq!(ErrorCode::ALL.len(), 17);
        for &code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn names() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("Alice_01-x"));
        assert!(is_valid_name(&"x".repeat(32)));
        assert!(!is_valid_name(&"x".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
        assert!(!is_valid_name("a.b"));
    }

    #[test]
    fn login_keeps_spaces_in_password() {
        assert_eq!(
            p("LOGIN alice my secret pw").unwrap(),
            Some(Command::Login {
                user: "alice".into(),
                password: "my secret pw".into()
            })
        );
        assert_eq!(
            p("login bob x").unwrap(),
            Some(Command::Login {
                user: "bob".into(),
                password: "x".into()
            })
        );
        assert_eq!(code("LOGIN alice"), ErrorCode::BadArgs);
        assert_eq!(code("LOGIN"), ErrorCode::BadArgs);
        assert_eq!(code("LOGIN a.b pw"), ErrorCode::BadName);
        assert!(matches!(
            p("Register carol pw").unwrap(),
            Some(Command::Register { .. })
        ));
    }

    #[test]
    fn resume_takes_a_user_and_one_token() {
        assert_eq!(
            p("RESUME alice 0123abcd").unwrap(),
            Some(Command::Resume {
                user: "alice".into(),
                token: "0123abcd".into()
            })
        );
        assert!(matches!(
            p("resume bob x").unwrap(),
            Some(Command::Resume { .. })
        ));
        for bad in [
            "RESUME",
            "RESUME alice",
            "RESUME alice a b",
            "RESUME alice ",
        ] {
            assert_eq!(code(bad), ErrorCode::BadArgs, "{bad:?}");
        }
        assert_eq!(code("RESUME a.b tok"), ErrorCode::BadName);
        let c = p("RESUME alice s3cret").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(allowed_before_login("RESUME alice x"));
    }

    #[test]
    fn debug_never_shows_password() {
        let c = p("LOGIN alice hunter2").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn control_characters_are_refused_but_tab() {
        for bad in [
            "hi\rMSG lobby 1-0 admin forged",
            "\x1b[2Jclear",
            "/msg bob a\x07bell",
            "/publish \u{85}next line",
            "del\x7f",
        ] {
            assert_eq!(code(bad), ErrorCode::BadEncoding, "{bad:?}");
        }
        assert_eq!(
            p("tab\tseparated").unwrap(),
            Some(Command::Say("tab\tseparated".into()))
        );
    }

    #[test]
    fn text_and_escape() {
        assert_eq!(
            p("hello world").unwrap(),
            Some(Command::Say("hello world".into()))
        );
        assert_eq!(
            p("//join me").unwrap(),
            Some(Command::Say("/join me".into()))
        );
        assert_eq!(p("").unwrap(), None);
        assert_eq!(p("   ").unwrap(), None);
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(p("/JOIN dev").unwrap(), Some(Command::Join("dev".into())));
        assert_eq!(p("/Ping").unwrap(), Some(Command::Ping));
        assert_eq!(p("/quit").unwrap(), Some(Command::Quit));
        assert!(matches!(
            p("login alice pw"),
            Ok(Some(Command::Login { .. }))
        ));
    }

    #[test]
    fn in_a_session_only_upper_case_login_words_are_commands() {
        let s = |line: &str| Command::parse_in_session(line).unwrap();
        for text in ["resume the build", "Login works now", "register here: x"] {
            assert_eq!(s(text), Some(Command::Say(text.into())), "{text}");
        }
        assert!(matches!(s("LOGIN alice pw"), Some(Command::Login { .. })));
        assert!(matches!(
            s("RESUME alice t0k"),
            Some(Command::Resume { .. })
        ));
        assert_eq!(s("/JOIN dev"), Some(Command::Join("dev".into())));
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(code("/join"), ErrorCode::BadArgs);
        assert_eq!(code("/join a b"), ErrorCode::BadArgs);
        assert_eq!(code("/join bad!name"), ErrorCode::BadName);
        assert_eq!(code("/leave now"), ErrorCode::BadArgs);
        assert_eq!(code("/msg bob"), ErrorCode::BadArgs);
        assert_eq!(code("/msg"), ErrorCode::BadArgs);
        assert_eq!(code("/msg b@b hi"), ErrorCode::BadName);
        assert_eq!(code("/publish"), ErrorCode::BadArgs);
        assert_eq!(code("/history 0"), ErrorCode::BadArgs);
        assert_eq!(code("/history x"), ErrorCode::BadArgs);
        assert_eq!(code("/history @ 3"), ErrorCode::BadName);
        assert_eq!(code("/frobnicate"), ErrorCode::UnknownCommand);
        assert_eq!(
            p("/msg bob  hi there").unwrap(),
            Some(Command::Msg {
                to: "bob".into(),
                text: " hi there".into()
            })
        );
    }

    #[test]
    fn key_forms() {
        let k = IdentityKey([9; 32]);
        assert_eq!(
            p(&format!("/key set {}", k.to_base64())).unwrap(),
            Some(Command::KeySet(k))
        );
        assert_eq!(p("/KEY bob").unwrap(), Some(Command::Key("bob".into())));
        assert_eq!(code("/key"), ErrorCode::BadArgs);
        assert_eq!(code("/key set"), ErrorCode::BadArgs);
        assert_eq!(code("/key set AAAA"), ErrorCode::BadArgs);
        assert_eq!(code("/key set not-base64!"), ErrorCode::BadArgs);
        assert_eq!(
            code(&format!("/key set {} x", k.to_base64())),
            ErrorCode::BadArgs
        );
        assert_eq!(code("/key b@b"), ErrorCode::BadName);
        assert!(!allowed_before_login("/key bob"));
    }

    #[test]
    fn history_forms() {
        assert_eq!(
            p("/history").unwrap(),
            Some(Command::History {
                target: HistoryTarget::Room,
                n: 20
            })
        );
        assert_eq!(
            p("/history @bob 5").unwrap(),
            Some(Command::History {
                target: HistoryTarget::User("bob".into()),
                n: 5
            })
        );
        assert_eq!(
            p("/history 9999").unwrap(),
            Some(Command::History {
                target: HistoryTarget::Room,
                n: 500
            })
        );
    }

    #[test]
    fn before_login() {
        for ok in [
            "/help",
            "/PING",
            "/quit",
            "LOGIN a b",
            "register a b",
            "login",
            "/edges",
            "/EDGES",
        ] {
            assert!(allowed_before_login(ok), "{ok}");
        }
        for no in [
            "hi",
            "/join x",
            "/join",
            "/nosuch",
            "//help",
            "LOGINX a b",
            "",
        ] {
            assert!(!allowed_before_login(no), "{no}");
        }
    }
}
