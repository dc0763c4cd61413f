//! End-to-end encryption of private messages: the user's key pair on disk, peers' keys trusted on first use, sealing `/msg` texts and opening `DM`/`HIST @` ones.
//!
//! A sealed text is `e2e:` and the base64 of: the sender's public key (32
//! bytes), the recipient's (32), a random nonce (24) and the crypto_box
//! (X25519, XSalsa20-Poly1305) of the text between the two key pairs. The
//! box is the same from either side, so the recipient opens it with its
//! private key and the sender's public key, and the sender (its history)
//! with its private key and the recipient's.
//!
//! Before each message the client asks the server for the peer's key
//! (`/key <user>`), so that a new key is seen at once; while that lookup is
//! out, the user's further lines wait behind it, so that they go out in the
//! order typed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::{Nonce, PublicKey, SalsaBox, SecretKey};
use shared::identity::IdentityKey;
use shared::line::ServerLine;
use shared::protocol::Command;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a sealed text starts with.
pub const PREFIX: &str = "e2e:";
/// What an opened text is shown after.
pub const LOCK: &str = "🔒 ";
/// Sender key, recipient key, nonce.
const HEADER: usize = 32 + 32 + 24;
/// Poly1305's tag.
const TAG: usize = 16;
/// The most lines that wait behind a key lookup.
const BACKLOG: usize = 1000;
/// The most boxes remembered as opened (see [`Opened`]).
const OPENED: usize = 10_000;

/// What the engine asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A line to send.
    Send(String),
    /// A private message went out (`sealed`: encrypted).
    Sent {
        to: String,
        text: String,
        sealed: bool,
    },
    /// Something to tell the user.
    Notice(String),
    /// Something to tell the user loudly.
    Warning(String),
}

/// The request whose answer the user's lines wait for.
#[derive(Debug)]
enum Inflight {
    /// The login (`OK LOGIN`, then `/key set`).
    Login,
    /// `/key set`, after the login.
    Publish,
    /// `/key <to>`, for a message to `to`; `key` is `to`'s once the `KEY`
    /// line is in; `ahead`: the final replies still due to lines sent
    /// before it (the server answers in order).
    Lookup {
        to: String,
        text: String,
        key: Option<IdentityKey>,
        ahead: usize,
    },
}

pub struct E2e {
    user: String,
    secret: SecretKey,
    public: IdentityKey,
    known_path: PathBuf,
    /// The peers' keys trusted (the known-keys file).
    known: BTreeMap<String, IdentityKey>,
    /// Keys that differ from the trusted ones (`None`: the peer has no key
    /// any more), until `/trust`.
    changed: HashMap<String, Option<IdentityKey>>,
    inflight: Option<Inflight>,
    backlog: VecDeque<String>,
    /// Final replies (`OK`/`ERR`) due to the lines passed on since the
    /// last lookup: so that an `ERR` is told to be the lookup's or not.
    unanswered: usize,
    /// The longest line the server takes, terminator included.
    max_line: usize,
    opened: Opened,
}

/// The boxes opened in this run of the client, by nonce (every box has its
/// own, and it is sealed with it): a `DM` whose box was opened before is a
/// second delivery, a server replaying it or delivering it again. The
/// latest [`OPENED`], oldest forgotten first.
#[derive(Default)]
struct Opened {
    nonces: HashSet<[u8; 24]>,
    order: VecDeque<[u8; 24]>,
}

impl Opened {
    /// Notes `nonce`; whether it was noted before.
    fn again(&mut self, nonce: [u8; 24]) -> bool {
        if !self.nonces.insert(nonce) {
            return true;
        }
        self.order.push_back(nonce);
        if self.order.len() > OPENED {
            if let Some(old) = self.order.pop_front() {
                self.nonces.remove(&old);
            }
        }
        false
    }
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e").field("user", &self.user).finish()
    }
}

/// The user's configuration directory: `$XDG_CONFIG_HOME/chat`, else
/// `~/.config/chat`.
pub fn config_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("chat"))
}

/// The private key file of `user` in `dir`.
pub fn key_path(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.key"))
}

impl E2e {
    /// The engine of `user`, with its key pair from `dir` (made on first
    /// use) and the peers' keys it trusts. Refuses a key file that others
    /// may read.
    pub fn load(dir: &Path, user: &str, max_line: usize) -> Result<E2e, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let secret = load_or_create(&key_path(dir, user))?;
        let known_path = dir.join(format!("{user}.known_keys"));
        let known = read_known(&known_path)?;
        Ok(E2e {
            user: user.to_string(),
            public: IdentityKey(secret.public_key().to_bytes()),
            secret,
            known_path,
            known,
            changed: HashMap::new(),
            // Nothing goes out before the key is published.
            inflight: Some(Inflight::Login),
            backlog: VecDeque::new(),
            unanswered: 0,
            max_line,
            opened: Opened::default(),
        })
    }

    /// Logged in: publish the key (again: another device may have replaced
    /// it).
    pub fn login(&mut self) -> Vec<Out> {
        self.inflight = Some(Inflight::Publish);
        vec![Out::Send(format!("/key set {}", self.public.to_base64()))]
    }

    /// The connection is gone: lines waiting are dropped (said how many).
    pub fn reset(&mut self) -> Vec<Out> {
        let lost = self.backlog.len()
            + usize::from(matches!(self.inflight, Some(Inflight::Lookup { .. })));
        self.backlog.clear();
        self.unanswered = 0;
        self.inflight = Some(Inflight::Login);
        match lost {
            0 => vec![],
            n => vec![Out::Warning(format!(
                "{n} line(s) waiting for a key lookup were not sent"
            ))],
        }
    }

    /// A line the user typed.
    pub fn input(&mut self, line: &str) -> Vec<Out> {
        if self.inflight.is_none() {
            return self.process(line);
        }
        if self.backlog.len() == BACKLOG {
            return vec![Out::Warning(format!(
                "too many lines waiting, not sent: {line}"
            ))];
        }
        self.backlog.push_back(line.to_string());
        vec![]
    }

    fn process(&mut self, line: &str) -> Vec<Out> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default().to_ascii_lowercase();
        let args: Vec<&str> = words.collect();
        match (cmd.as_str(), args.as_slice()) {
            ("/trust", [user]) => vec![self.trust(user, None)],
            ("/trust", [user, fingerprint]) => vec![self.trust(user, Some(fingerprint))],
            ("/fingerprint", []) => vec![Out::Notice(format!(
                "your key's fingerprint: {}",
                self.public.fingerprint()
            ))],
            ("/fingerprint", [user]) => vec![self.fingerprint(user)],
            ("/trust" | "/fingerprint", _) => vec![Out::Notice(
                "usage: /trust <user> [<fingerprint>], /fingerprint [<user>]".into(),
            )],
            // Read as the server reads it: what it would take as a message
            // is sealed.
            _ => match Command::parse(line) {
                Ok(Some(Command::Msg { to, text })) => {
                    let lookup = format!("/key {to}");
                    let (key, ahead) = (None, std::mem::take(&mut self.unanswered));
                    self.inflight = Some(Inflight::Lookup {
                        to,
                        text,
                        key,
                        ahead,
                    });
                    vec![Out::Send(lookup)]
                }
                // No final reply: text (unless refused), a blank line, `/quit`.
                Ok(None | Some(Command::Say(_) | Command::Quit)) => {
                    vec![Out::Send(line.to_string())]
                }
                _ => vec![self.pass(line.to_string())],
            },
        }
    }

    /// A server line. Returns whether it answered the engine's own request
    /// (then it is not shown), and what to do.
    pub fn on_line(&mut self, l: &ServerLine) -> (bool, Vec<Out>) {
        // A final reply to a line passed on before the lookup is not its.
        match &mut self.inflight {
            Some(Inflight::Lookup { ahead, .. }) if *ahead > 0 => {
                *ahead -= usize::from(l.is_final());
                return (false, vec![]);
            }
            None if l.is_final() => self.unanswered = self.unanswered.saturating_sub(1),
            _ => {}
        }
        match (l, &mut self.inflight) {
            (ServerLine::Key { user, key, .. }, Some(Inflight::Lookup { to, key: k, .. }))
                if to == user =>
            {
                // A key the server mangled counts as none (see `deliver`).
                *k = IdentityKey::parse(key);
                (true, vec![])
            }
            (ServerLine::OkKey { user }, Some(Inflight::Publish)) if *user == self.user => {
                self.inflight = None;
                (true, self.drain())
            }
            (ServerLine::OkKey { user }, Some(Inflight::Lookup { to, .. })) if to == user => {
                let Some(Inflight::Lookup { to, text, key, .. }) = self.inflight.take() else {
                    unreachable!()
                };
                let mut out = self.deliver(&to, key, &text);
                out.extend(self.drain());
                (true, out)
            }
            // Not the login's: lines wait for `OK LOGIN` whatever comes.
            (ServerLine::Err { code, text }, Some(Inflight::Lookup { .. } | Inflight::Publish)) => {
                let what = match self.inflight.take() {
                    Some(Inflight::Lookup { to, .. }) => format!("not sent to {to}: {code} {text}"),
                    _ => format!(
                        "your key could not be published ({code} {text}): others cannot encrypt to you"
                    ),
                };
                let mut out = vec![Out::Warning(what)];
                out.extend(self.drain());
                (false, out)
            }
            _ => (false, vec![]),
        }
    }

    /// The lines that waited, until one waits again.
    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while self.inflight.is_none() {
            let Some(line) = self.backlog.pop_front() else {
                break;
            };
            out.extend(self.process(&line));
        }
        out
    }

    /// Sends `text` to `to`, whose key the server says is `key`: sealed to
    /// a trusted key, in plain text to a peer without one, not at all to a
    /// key that changed.
    fn deliver(&mut self, to: &str, key: Option<IdentityKey>, text: &str) -> Vec<Out> {
        let mut out = Vec::new();
        // To yourself: your own key, nothing to trust.
        let trusted = match to == self.user {
            true => Some(self.public),
            false => self.known.get(to).copied(),
        };
        match (trusted, key) {
            (Some(k), Some(key)) if k == key => {}
            (Some(_), _) if to == self.user => {
                return vec![Out::Warning(
                    "not sent: your key on the server is another device's \
                     (log in again here to publish this one)"
                        .into(),
                )]
            }
            (None, None) => {
                return vec![
                    self.pass(format!("/msg {to} {text}")),
                    Out::Sent {
                        to: to.into(),
                        text: text.into(),
                        sealed: false,
                    },
                ]
            }
            (None, Some(key)) => out.push(self.pin(to, key)),
            (Some(_), key) => {
                self.changed.insert(to.to_string(), key);
                return vec![Out::Warning(format!(
                    "{} Not sent.",
                    self.changed_warning(to)
                ))];
            }
        }
        let Some(key) = key else { return out };
        let line = format!("/msg {to} {}", self.seal(to, &key, text));
        if line.len() + 1 > self.max_line {
            let room = self.max_line - 1 - format!("/msg {to} {PREFIX}").len();
            let names = self.user.len() + to.len() + 2;
            let most = (room / 4 * 3).saturating_sub(HEADER + TAG + names);
            out.push(Out::Warning(format!(
                "not sent: too long to encrypt (at most {most} bytes of text)"
            )));
            return out;
        }
        out.push(self.pass(line));
        out.push(Out::Sent {
            to: to.into(),
            text: text.into(),
            sealed: true,
        });
        out
    }

    /// Sends a line that gets a final reply.
    fn pass(&mut self, line: String) -> Out {
        self.unanswered += 1;
        Out::Send(line)
    }

    /// `text` sealed for user `to_user`, whose key is `to`. Inside the box
    /// it is `<sender>\n<recipient>\n<text>` (names hold no newline, nor
    /// does a line's text): the box opens the same with either side's
    /// private key, so the names say which way it went and between whom.
    fn seal(&self, to_user: &str, to: &IdentityKey, text: &str) -> String {
        let sealer = SalsaBox::new(&PublicKey::from(to.0), &self.secret);
        let nonce = SalsaBox::generate_nonce(&mut OsRng);
        let inner = format!("{}\n{to_user}\n{text}", self.user);
        let sealed = sealer
            .encrypt(&nonce, inner.as_bytes())
            .expect("a line of text is well within what a box holds");
        let blob = [&self.public.0[..], &to.0, nonce.as_slice(), &sealed].concat();
        format!("{PREFIX}{}", STANDARD.encode(blob))
    }

    /// The text of a private message from `from` (the user, in its
    /// history) as shown, and a warning to show before it if any: a sealed
    /// text opened gets the lock, one that does not open says so and never
    /// shows as if it were the text. `delivered`: a `DM` (not a history
    /// row), marked `⚠ delivered again` if its box was opened before.
    pub fn open(&mut self, from: &str, text: &str, delivered: bool) -> (String, Option<Out>) {
        let Some(b64) = text.strip_prefix(PREFIX) else {
            // Plain text that looks sealed (it starts as the lock or a
            // warning does), or from a peer whose key is known (its client
            // would have sealed it): said to be what it is.
            let looks = ['🔒', '⚠']
                .iter()
                .any(|c| text.trim_start().starts_with(*c));
            let expected = from != self.user && self.known.contains_key(from);
            if looks || expected {
                return (format!("⚠ not encrypted: {text}"), None);
            }
            return (text.to_string(), None);
        };
        let bad = |why: &str| (format!("⚠ undecryptable message ({why})"), None);
        let blob = match STANDARD.decode(b64) {
            Ok(blob) if blob.len() >= HEADER + TAG => blob,
            _ => return bad("malformed"),
        };
        let key = |at: usize| IdentityKey(blob[at..at + 32].try_into().expect("32 bytes"));
        let (sender, recipient) = (key(0), key(32));
        let own = from == self.user;
        let (mine, peer) = if own {
            (sender, recipient)
        } else {
            (recipient, sender)
        };
        if mine != self.public {
            return bad("sealed for another key of yours");
        }
        let opener = SalsaBox::new(&PublicKey::from(peer.0), &self.secret);
        let plain = opener
            .decrypt(Nonce::from_slice(&blob[64..HEADER]), &blob[HEADER..])
            .ok()
            .and_then(|p| String::from_utf8(p).ok());
        let Some(plain) = plain else {
            return bad("tampered with, or not sealed by its sender");
        };
        let shown = match plain.splitn(3, '\n').collect::<Vec<_>>()[..] {
            [sender, recipient, text] => {
                // Shown under another name, or back to its sender as the
                // peer's: the box is genuine, the label is not.
                if sender != from || (!own && recipient != self.user) {
                    return bad("relabelled: not sealed by its sender for you");
                }
                format!("{LOCK}{text}")
            }
            // Sealed by an older client, whose boxes name nobody.
            _ => format!("⚠ unverified sender {LOCK}{plain}"),
        };
        let nonce = blob[64..HEADER].try_into().expect("24 bytes");
        let shown = match self.opened.again(nonce) && delivered {
            true => format!("⚠ delivered again {shown}"),
            false => shown,
        };
        if own {
            return (shown, None);
        }
        match self.known.get(from) {
            Some(k) if *k == peer => (shown, None),
            Some(_) => {
                self.changed.insert(from.to_string(), Some(peer));
                let warning = Out::Warning(self.changed_warning(from));
                (format!("⚠ unverified key {shown}"), Some(warning))
            }
            None => {
                let notice = self.pin(from, peer);
                (shown, Some(notice))
            }
        }
    }

    /// Trusts `user`'s key on first use.
    fn pin(&mut self, user: &str, key: IdentityKey) -> Out {
        self.known.insert(user.to_string(), key);
        if let Err(e) = self.save_known() {
            return Out::Warning(e);
        }
        Out::Notice(format!(
            "first contact with {user}: their key {} is trusted from now on (compare it with them out of band)",
            key.fingerprint()
        ))
    }

    fn changed_warning(&self, user: &str) -> String {
        let fp = |k: Option<&IdentityKey>| k.map_or("none".into(), IdentityKey::fingerprint);
        let new = self.changed.get(user).copied().flatten();
        format!(
            "WARNING: {user}'s KEY HAS CHANGED (trusted {}, now {}): someone may be \
             impersonating them, or they use a new device. Messages to {user} are not sent \
             until you compare fingerprints with them and type /trust {user} <fingerprint>.",
            fp(self.known.get(user)),
            fp(new.as_ref())
        )
    }

    /// `/trust <user> [<fingerprint>]`: accepts the key that changed; with
    /// a fingerprint, only if it is that key's (the one compared with the
    /// peer, not one the server put in its place since).
    fn trust(&mut self, user: &str, fingerprint: Option<&str>) -> Out {
        let Some(&key) = self.changed.get(user) else {
            return Out::Notice(format!("{user}'s key has not changed: nothing to trust"));
        };
        if let Some(given) = fingerprint {
            if !key.is_some_and(|k| k.has_fingerprint(given)) {
                let new = key.map_or("none".into(), |k| k.fingerprint());
                return Out::Warning(format!(
                    "{given} is not the fingerprint of {user}'s new key ({new}): not trusted"
                ));
            }
        }
        self.changed.remove(user);
        match key {
            Some(k) => self.known.insert(user.to_string(), k),
            None => self.known.remove(user),
        };
        if let Err(e) = self.save_known() {
            return Out::Warning(e);
        }
        let fp = key.map_or("no key (messages go in plain text)".into(), |k| {
            k.fingerprint()
        });
        Out::Notice(format!("{user}'s key is trusted now: {fp}"))
    }

    /// `/fingerprint <user>`.
    fn fingerprint(&self, user: &str) -> Out {
        let mut text = match self.known.get(user) {
            Some(k) => format!("{user}'s trusted key: {}", k.fingerprint()),
            None => format!("no key of {user} trusted yet"),
        };
        if self.changed.contains_key(user) {
            let new = self.changed[user].map_or("none".into(), |k| k.fingerprint());
            text.push_str(&format!("; new key, NOT trusted: {new} (/trust {user})"));
        }
        Out::Notice(text)
    }

    fn save_known(&self) -> Result<(), String> {
        let text: String = self
            .known
            .iter()
            .map(|(user, key)| format!("{user} {}\n", key.to_base64()))
            .collect();
        let tmp = self.known_path.with_extension("tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.known_path));
        written.map_err(|e| format!("{}: {e}", self.known_path.display()))
    }
}

/// The private key in `path`, made (mode 0600) if there is none. A file
/// that others may read or write is refused.
fn load_or_create(path: &Path) -> Result<SecretKey, String> {
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{}: the private key is open to others (mode {mode:04o}); \
                     refusing to use it: chmod 600 it",
                    path.display()
                ));
            }
            let text = std::fs::read_to_string(path).map_err(at)?;
            // 32 bytes of base64, as a public key is written.
            let bytes = IdentityKey::parse(text.trim())
                .ok_or_else(|| format!("{}: not a private key", path.display()))?;
            Ok(SecretKey::from(bytes.0))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = SecretKey::generate(&mut OsRng);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(at)?;
            writeln!(f, "{}", IdentityKey(secret.to_bytes()).to_base64()).map_err(at)?;
            Ok(secret)
        }
        Err(e) => Err(at(e)),
    }
}

/// The known-keys file: `<user> <base64 key>` lines.
fn read_known(path: &Path) -> Result<BTreeMap<String, IdentityKey>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .and_then(|(user, key)| Some((user.to_string(), IdentityKey::parse(key)?)))
                .ok_or_else(|| format!("{}: bad line {l:?}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh configuration directory of the test's own, removed on drop.
    fn dir() -> ::e2e::ConfigDir {
        ::e2e::config_dir()
    }

    fn line(l: &str) -> ServerLine {
        ServerLine::parse(l).unwrap()
    }

    /// `user`'s engine, logged in: returns it and its public key.
    fn engine(dir: &Path, user: &str) -> (E2e, String) {
        let mut e = E2e::load(dir, user, 4096).unwrap();
        let [Out::Send(set)] = &e.login()[..] else {
            panic!("publishes its key")
        };
        let key = set.strip_prefix("/key set ").unwrap().to_string();
        assert_eq!(e.on_line(&line(&format!("OK KEY {user}"))), (true, vec![]));
        (e, key)
    }

    fn sends(outs: &[Out]) -> Vec<&str> {
        outs.iter()
            .filter_map(|o| match o {
                Out::Send(l) => Some(l.as_str()),
                _ => None,
            })
            .collect()
    }

    /// `from` sends `text` to `to`, whose key the server says is `key`:
    /// what `from` does once the lookup is answered.
    fn msg(from: &mut E2e, to: &str, key: Option<&str>, text: &str) -> Vec<Out> {
        let asked = from.input(&format!("/msg {to} {text}"));
        assert_eq!(sends(&asked), [format!("/key {to}")]);
        if let Some(key) = key {
            let fp = IdentityKey::parse(key).unwrap().fingerprint();
            assert!(from.on_line(&line(&format!("KEY {to} {key} {fp}"))).0);
        }
        let (taken, outs) = from.on_line(&line(&format!("OK KEY {to}")));
        assert!(taken);
        // The server's answer to what went out.
        for sent in sends(&outs) {
            assert!(sent.starts_with("/msg"), "{sent}");
            assert!(!from.on_line(&line(&format!("OK MSG {to} 1-0"))).0);
        }
        outs
    }

    fn sealed(outs: &[Out]) -> String {
        let line = sends(outs).pop().expect("sent");
        line.split_once(" e2e:")
            .map(|(_, s)| format!("e2e:{s}"))
            .expect("sealed")
    }

    #[test]
    fn a_message_is_sealed_for_the_peer_and_opens_on_both_sides() {
        let (a, b) = (dir(), dir());
        let (mut alice, _) = engine(&a, "alice");
        let (mut bob, bob_key) = engine(&b, "bob");
        let outs = msg(&mut alice, "bob", Some(&bob_key), "meet at noon");
        let text = sealed(&outs);
        assert!(!text.contains("noon"));
        assert!(outs
            .iter()
            .any(|o| matches!(o, Out::Notice(t) if t.contains("first contact"))));
        assert!(outs.contains(&Out::Sent {
            to: "bob".into(),
            text: "meet at noon".into(),
            sealed: true
        }));
        // bob reads it, and trusts alice's key from then on.
        let (shown, notice) = bob.open("alice", &text, true);
        assert_eq!(shown, "🔒 meet at noon");
        assert!(matches!(notice, Some(Out::Notice(_))));
        // Again in the history: shown as it is.
        assert_eq!(
            bob.open("alice", &text, false),
            ("🔒 meet at noon".into(), None)
        );
        // The same box delivered again as a DM (a server replaying it) is
        // marked; the same text sealed again is a new box, and is not.
        assert_eq!(
            bob.open("alice", &text, true).0,
            "⚠ delivered again 🔒 meet at noon"
        );
        let resent = sealed(&msg(&mut alice, "bob", Some(&bob_key), "meet at noon"));
        assert_eq!(bob.open("alice", &resent, true).0, "🔒 meet at noon");
        // alice reads her own in the history.
        assert_eq!(alice.open("alice", &text, false).0, "🔒 meet at noon");
        // The key is looked up for every message.
        let again = msg(&mut alice, "bob", Some(&bob_key), "again");
        assert!(sends(&again)[0].starts_with("/msg bob e2e:"));
        // Plain text passes as it is, but from a peer whose key is known
        // (its client would have sealed it) it is said to be plain.
        assert_eq!(bob.open("dave", "hello", false), ("hello".into(), None));
        assert_eq!(
            bob.open("alice", "hello", false).0,
            "⚠ not encrypted: hello"
        );
    }

    #[test]
    fn a_box_under_another_label_does_not_open_and_a_fake_lock_shows() {
        let (a, b) = (dir(), dir());
        let (mut alice, alice_key) = engine(&a, "alice");
        let (mut bob, bob_key) = engine(&b, "bob");
        msg(&mut bob, "alice", Some(&alice_key), "hi");
        let text = sealed(&msg(&mut alice, "bob", Some(&bob_key), "pay 10 euros"));
        // Back to its sender as the peer's (the two keys swapped: the box
        // opens the same both ways), or to bob under carol's name.
        let mut blob = STANDARD.decode(&text[PREFIX.len()..]).unwrap();
        let (sender, recipient) = (blob[..32].to_vec(), blob[32..64].to_vec());
        blob[..32].copy_from_slice(&recipient);
        blob[32..64].copy_from_slice(&sender);
        let reflected = format!("{PREFIX}{}", STANDARD.encode(&blob));
        let (shown, _) = alice.open("bob", &reflected, false);
        assert!(shown.starts_with("⚠ undecryptable"), "{shown}");
        let (shown, _) = bob.open("carol", &text, false);
        assert!(shown.starts_with("⚠ undecryptable"), "{shown}");
        assert!(!bob.known.contains_key("carol"), "no key pinned for carol");
        assert_eq!(bob.open("alice", &text, false).0, "🔒 pay 10 euros");
        // Plain text made to look sealed.
        let (shown, _) = bob.open("dave", "🔒 wire 500 euros to X", false);
        assert_eq!(shown, "⚠ not encrypted: 🔒 wire 500 euros to X");
        // A box of an older client (no names inside): opened, flagged.
        let nonce = SalsaBox::generate_nonce(&mut OsRng);
        let old = SalsaBox::new(&PublicKey::from(bob.public.0), &alice.secret)
            .encrypt(&nonce, &b"old text"[..])
            .unwrap();
        let blob = [&alice.public.0[..], &bob.public.0, nonce.as_slice(), &old].concat();
        let v1 = format!("{PREFIX}{}", STANDARD.encode(blob));
        assert_eq!(
            bob.open("alice", &v1, false).0,
            "⚠ unverified sender 🔒 old text"
        );
    }

    #[test]
    fn a_tampered_message_never_shows_as_text() {
        let (a, b, c) = (dir(), dir(), dir());
        let (mut alice, _) = engine(&a, "alice");
        let (mut bob, bob_key) = engine(&b, "bob");
        let text = sealed(&msg(&mut alice, "bob", Some(&bob_key), "pay 10 euros"));
        let mut blob = STANDARD.decode(&text[PREFIX.len()..]).unwrap();
        for at in [0, 40, 70, HEADER + 1, blob.len() - 1] {
            blob[at] ^= 1;
            let forged = format!("{PREFIX}{}", STANDARD.encode(&blob));
            let (shown, _) = bob.open("alice", &forged, false);
            assert!(shown.starts_with("⚠ undecryptable"), "{at}: {shown}");
            assert!(!shown.contains("euros"));
            blob[at] ^= 1;
        }
        assert!(bob
            .open("alice", "e2e:!!", false)
            .0
            .starts_with("⚠ undecryptable"));
        assert!(bob
            .open("alice", "e2e:AAAA", false)
            .0
            .starts_with("⚠ undecryptable"));
        // Another user cannot open it.
        let (mut carol, _) = engine(&c, "carol");
        assert!(carol
            .open("alice", &text, false)
            .0
            .starts_with("⚠ undecryptable"));
    }

    #[test]
    fn opened_boxes_are_remembered_up_to_a_bound() {
        let nonce = |i: usize| {
            let mut n = [0u8; 24];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            n
        };
        let mut opened = Opened::default();
        assert!(!opened.again(nonce(0)));
        assert!(opened.again(nonce(0)));
        for i in 1..=OPENED {
            assert!(!opened.again(nonce(i)));
        }
        // The oldest is forgotten first; the latest are kept.
        assert_eq!(opened.nonces.len(), OPENED);
        assert!(!opened.again(nonce(0)));
        assert!(opened.again(nonce(OPENED)));
    }

    #[test]
    fn a_changed_key_blocks_sending_until_trusted() {
        let (a, b) = (dir(), dir());
        let (mut alice, _) = engine(&a, "alice");
        let (_, old) = engine(&b, "bob");
        msg(&mut alice, "bob", Some(&old), "first");
        // bob starts over with a new key.
        std::fs::remove_dir_all(&b).unwrap();
        let (mut bob, new) = engine(&b, "bob");
        let outs = msg(&mut alice, "bob", Some(&new), "second");
        assert!(sends(&outs).is_empty(), "{outs:?}");
        assert!(
            matches!(&outs[..], [Out::Warning(w)] if w.contains("CHANGED") && w.contains("/trust bob"))
        );
        // Still refused, and shown by /fingerprint.
        assert!(sends(&msg(&mut alice, "bob", Some(&new), "third")).is_empty());
        let [Out::Notice(fp)] = &alice.input("/fingerprint bob")[..] else {
            panic!()
        };
        let new_fp = IdentityKey::parse(&new).unwrap().fingerprint();
        assert!(fp.contains(&new_fp) && fp.contains("NOT trusted"), "{fp}");
        // Not with a fingerprint other than the new key's (one compared
        // with bob before the server swapped his key again, say).
        let old_fp = IdentityKey::parse(&old).unwrap().fingerprint();
        let outs = alice.input(&format!("/trust bob {old_fp}"));
        assert!(
            matches!(&outs[..], [Out::Warning(w)] if w.contains("not trusted")),
            "{outs:?}"
        );
        assert!(sends(&msg(&mut alice, "bob", Some(&new), "still not")).is_empty());
        // With the fingerprint compared (in any case, colons or none), yes.
        let typed = new_fp.replace(':', "").to_ascii_uppercase();
        let outs = alice.input(&format!("/trust bob {typed}"));
        assert!(
            matches!(&outs[..], [Out::Notice(n)] if n.contains("trusted now")),
            "{outs:?}"
        );
        let text = sealed(&msg(&mut alice, "bob", Some(&new), "fourth"));
        assert_eq!(bob.open("alice", &text, false).0, "🔒 fourth");
        // The trust is kept in the known-keys file.
        let reloaded = E2e::load(&a, "alice", 4096).unwrap();
        assert_eq!(reloaded.known["bob"].to_base64(), new);
        // To oneself: no first contact, and no trust asked.
        let (_, own) = engine(&a, "alice");
        let to_self = msg(&mut alice, "alice", Some(&own), "note to self");
        assert!(matches!(
            &to_self[..],
            [Out::Send(_), Out::Sent { sealed: true, .. }]
        ));
        assert_eq!(
            alice.open("alice", &sealed(&to_self), false).0,
            "🔒 note to self"
        );
        let elsewhere = msg(&mut alice, "alice", Some(&old), "mixed up");
        assert!(matches!(&elsewhere[..], [Out::Warning(w)] if w.contains("another device")));
        // A message sealed by a new key of alice's is flagged, not trusted.
        std::fs::remove_dir_all(&a).unwrap();
        let (mut alice2, _) = engine(&a, "alice");
        let text = sealed(&msg(&mut alice2, "bob", Some(&new), "from a new device"));
        let (shown, warning) = bob.open("alice", &text, false);
        assert!(shown.starts_with("⚠ unverified key 🔒"), "{shown}");
        assert!(matches!(warning, Some(Out::Warning(w)) if w.contains("CHANGED")));
    }

    #[test]
    fn a_peer_without_a_key_gets_plain_text_marked_so() {
        let a = dir();
        let (mut alice, _) = engine(&a, "alice");
        let outs = msg(&mut alice, "dave", None, "no secrets");
        assert_eq!(sends(&outs), ["/msg dave no secrets"]);
        assert!(outs.contains(&Out::Sent {
            to: "dave".into(),
            text: "no secrets".into(),
            sealed: false
        }));
    }

    #[test]
    fn lines_typed_during_a_lookup_wait_and_keep_their_order() {
        let (a, b) = (dir(), dir());
        let (mut alice, _) = engine(&a, "alice");
        let (_, bob_key) = engine(&b, "bob");
        assert_eq!(sends(&alice.input("/msg bob one")), ["/key bob"]);
        assert!(alice.input("/join dev").is_empty());
        assert!(alice.input("/msg bob two").is_empty());
        let fp = IdentityKey::parse(&bob_key).unwrap().fingerprint();
        let key_line = line(&format!("KEY bob {bob_key} {fp}"));
        alice.on_line(&key_line);
        let (_, outs) = alice.on_line(&line("OK KEY bob"));
        let sent = sends(&outs);
        assert_eq!(sent.len(), 3);
        assert!(sent[0].starts_with("/msg bob e2e:"));
        assert_eq!(sent[1..], ["/join dev", "/key bob"]);
        // The answers to the two lines before the lookup come first: an
        // ERR among them is not the lookup's.
        assert_eq!(alice.on_line(&line("OK MSG bob 1-0")), (false, vec![]));
        assert_eq!(alice.on_line(&line("ERR bad-name no")), (false, vec![]));
        alice.on_line(&key_line);
        let (_, outs) = alice.on_line(&line("OK KEY bob"));
        assert!(sends(&outs)[0].starts_with("/msg bob e2e:"));
        alice.on_line(&line("OK MSG bob 2-0"));
        // A failed lookup says so and lets the rest go.
        assert_eq!(sends(&alice.input("/msg nobody hi")), ["/key nobody"]);
        assert!(alice.input("/rooms").is_empty());
        let (taken, outs) = alice.on_line(&line("ERR no-such-user no such user"));
        assert!(!taken);
        assert!(matches!(&outs[0], Out::Warning(w) if w.contains("not sent to nobody")));
        assert_eq!(sends(&outs), ["/rooms"]);
    }

    #[test]
    fn nothing_goes_out_before_the_login_and_the_key() {
        let a = dir();
        let mut e = E2e::load(&a, "alice", 4096).unwrap();
        assert!(e.input("/join dev").is_empty());
        // A failed login lets nothing through.
        let failed = e.on_line(&line("ERR unavailable try again"));
        assert_eq!(failed, (false, vec![]));
        let [Out::Send(set)] = &e.login()[..] else {
            panic!()
        };
        assert!(set.starts_with("/key set "));
        assert!(e.input("/rooms").is_empty());
        let (taken, outs) = e.on_line(&line("OK KEY alice"));
        assert!(taken);
        assert_eq!(sends(&outs), ["/join dev", "/rooms"]);
    }

    #[test]
    fn a_text_too_long_to_seal_is_refused() {
        let (a, b) = (dir(), dir());
        let (mut alice, _) = engine(&a, "alice");
        let (_, bob_key) = engine(&b, "bob");
        let outs = msg(&mut alice, "bob", Some(&bob_key), &"x".repeat(3000));
        assert!(sends(&outs).is_empty());
        let Some(Out::Warning(w)) = outs.last() else {
            panic!("{outs:?}")
        };
        let most: usize = w
            .split("at most ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // The longest that fits does fit.
        let fits = msg(&mut alice, "bob", Some(&bob_key), &"x".repeat(most));
        assert!(sends(&fits)[0].len() < 4096, "{most}");
        let over = msg(&mut alice, "bob", Some(&bob_key), &"x".repeat(most + 3));
        assert!(sends(&over).is_empty());
    }

    #[test]
    fn the_private_key_is_made_0600_and_refused_when_open_to_others() {
        let d = dir();
        let (e, _) = engine(&d, "alice");
        drop(e);
        let path = key_path(&d, "alice");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // The same key next time.
        let first = std::fs::read_to_string(&path).unwrap();
        E2e::load(&d, "alice", 4096).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = E2e::load(&d, "alice", 4096).unwrap_err();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        // One key file per user.
        E2e::load(&d, "bob", 4096).unwrap();
        assert!(key_path(&d, "bob").exists());
    }
}
