//! The command table: what the edge does for each parsed client command (pure, tested without sockets).

use shared::envelope::{Op, Secret};
use shared::line::ServerLine;
use shared::protocol::{self, Command, HistoryTarget};

/// What the reader does for one command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// A router request that expects no reply (a room line), sent with
    /// the others of the same read.
    Queue(Op),
    /// A router request whose reply is waited for.
    Route(Op),
    /// `LOGIN`, or `REGISTER` with `register`.
    Login {
        user: String,
        password: Secret,
        register: bool,
    },
    /// `RESUME`: log in with a resume token.
    Resume { user: String, token: Secret },
    /// Lines the edge answers by itself, one queue entry each.
    Reply(Vec<ServerLine>),
    /// Log out and close.
    Quit,
    /// `/edges`: the live edges, read from Redis by the edge itself.
    Edges,
}

impl Action {
    /// Whether the room lines read before go out first: for anything but
    /// a room line.
    pub(super) fn flushes(&self) -> bool {
        !matches!(self, Action::Queue(_))
    }
}

/// What to do for `cmd`.
pub(super) fn action(cmd: Command) -> Action {
    let route = Action::Route;
    match cmd {
        Command::Say(text) => Action::Queue(Op::Say { text }),
        Command::Login { user, password } => Action::Login {
            user,
            password: Secret(password),
            register: false,
        },
        Command::Register { user, password } => Action::Login {
            user,
            password: Secret(password),
            register: true,
        },
        Command::Resume { user, token } => Action::Resume {
            user,
            token: Secret(token),
        },
        Command::Join(room) => route(Op::Join { room }),
        Command::Leave => route(Op::Leave),
        Command::Rooms => route(Op::Rooms),
        Command::Who(room) => route(Op::Who { room }),
        Command::Subscribe(target) => route(Op::Subscribe { target }),
        Command::Unsubscribe(target) => route(Op::Unsubscribe { target }),
        Command::Subscriptions => route(Op::Subscriptions),
        Command::Publish(text) => route(Op::Publish { text }),
        Command::Msg { to, text } => route(Op::Msg { to, text }),
        Command::History { target, n } => {
            let with = match target {
                HistoryTarget::Room => None,
                HistoryTarget::User(user) => Some(user),
            };
            route(Op::History { with, n })
        }
        Command::KeySet(key) => route(Op::KeySet {
            key: key.to_base64(),
            fingerprint: key.fingerprint(),
        }),
        Command::Key(target) => route(Op::Key { target }),
        Command::Ping => Action::Reply(vec![ServerLine::OkPing]),
        Command::Help => {
            let mut lines: Vec<ServerLine> = protocol::HELP
                .iter()
                .map(|line| ServerLine::Info {
                    text: line.to_string(),
                })
                .collect();
            lines.push(ServerLine::OkHelp);
            Action::Reply(lines)
        }
        Command::Quit => Action::Quit,
        Command::Edges => Action::Edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(line: &str) -> Action {
        let cmd = Command::parse(line).unwrap().unwrap();
        action(cmd)
    }

    fn route(op: Op) -> Action {
        Action::Route(op)
    }

    #[test]
    fn a_room_line_is_queued_and_sends_nothing_before_it() {
        let a = act("hello there");
        assert_eq!(
            a,
            Action::Queue(Op::Say {
                text: "hello there".into()
            })
        );
        assert!(!a.flushes());
    }

    #[test]
    fn login_and_register_carry_the_password_hidden() {
        let a = act("LOGIN alice pw1");
        assert_eq!(
            a,
            Action::Login {
                user: "alice".into(),
                password: Secret("pw1".into()),
                register: false,
            }
        );
        assert!(!format!("{a:?}").contains("pw1"));
        assert!(matches!(
            act("REGISTER bob pw2"),
            Action::Login { register: true, .. }
        ));
        let a = act("RESUME alice tok3");
        assert_eq!(
            a,
            Action::Resume {
                user: "alice".into(),
                token: Secret("tok3".into()),
            }
        );
        assert!(!format!("{a:?}").contains("tok3"));
    }

    #[test]
    fn other_requests_go_to_the_router_and_wait_for_its_reply() {
        assert_eq!(act("/join dev"), route(Op::Join { room: "dev".into() }));
        assert_eq!(
            act("/subscribe carol"),
            route(Op::Subscribe {
                target: "carol".into()
            })
        );
        assert_eq!(act("/leave"), route(Op::Leave));
        assert_eq!(act("/rooms"), route(Op::Rooms));
        assert_eq!(act("/who"), route(Op::Who { room: None }));
        assert_eq!(
            act("/unsubscribe carol"),
            route(Op::Unsubscribe {
                target: "carol".into()
            })
        );
        assert_eq!(act("/subscriptions"), route(Op::Subscriptions));
        assert_eq!(
            act("/publish news"),
            route(Op::Publish {
                text: "news".into()
            })
        );
        assert_eq!(
            act("/msg bob hi"),
            route(Op::Msg {
                to: "bob".into(),
                text: "hi".into()
            })
        );
        assert!(act("/leave").flushes());
    }

    #[test]
    fn a_key_goes_to_the_router_with_its_fingerprint() {
        let key = shared::identity::IdentityKey([3; 32]);
        assert_eq!(
            act(&format!("/key set {}", key.to_base64())),
            route(Op::KeySet {
                key: key.to_base64(),
                fingerprint: key.fingerprint()
            })
        );
        assert_eq!(
            act("/key bob"),
            route(Op::Key {
                target: "bob".into()
            })
        );
    }

    #[test]
    fn history_of_the_room_or_with_a_user() {
        assert!(matches!(
            act("/history"),
            Action::Route(Op::History { with: None, .. })
        ));
        assert!(matches!(
            act("/history @bob"),
            Action::Route(Op::History { with: Some(ref u), .. }) if u == "bob"
        ));
    }

    #[test]
    fn ping_help_and_quit_are_answered_by_the_edge() {
        assert_eq!(act("/ping"), Action::Reply(vec![ServerLine::OkPing]));
        let Action::Reply(help) = act("/help") else {
            panic!("help is answered by the edge")
        };
        assert_eq!(help.len(), protocol::HELP.len() + 1);
        assert!(help[..help.len() - 1]
            .iter()
            .all(|l| matches!(l, ServerLine::Info { .. })));
        assert_eq!(help.last(), Some(&ServerLine::OkHelp));
        assert_eq!(act("/quit"), Action::Quit);
        assert_eq!(act("/edges"), Action::Edges);
    }
}
