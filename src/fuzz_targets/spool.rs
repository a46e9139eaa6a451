//! Drivers for what tern reads back from disk or from local users: spool
//! envelopes (`spool_envelope`), recipient state files (`spool_state`) and
//! sendmail drop files (`spool_drop`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use crate::delivery::aliases::Aliases;
use crate::delivery::{push_unique, Destination, Mailbox, RecipientPolicy, Refusal};
use crate::smtp::address::Address;
use crate::spool::envelope::{body_flag_offset, decode_state, encode_state, Recipient};
use crate::spool::{Progress, QueueId, RcptState, RcptStatus, StoredEnvelope};

use super::{check_address, fuzz_users, is_fuzz_local, Input, FUZZ_ALIASES};

fn fuzz_mailbox(input: &mut Input) -> Mailbox {
    Mailbox::new(&input.string()).unwrap_or_else(|| Mailbox::new("joe").expect("valid"))
}

fn fuzz_address(input: &mut Input) -> Address {
    let local = input.string();
    let domain = input.pick(&["remote.test", "[192.0.2.7]", "[ipv6:2001:db8::1]", "x.y.z"]);
    Address::from_parts(&local, domain)
        .unwrap_or_else(|_| Address::parse_mailbox("bob@remote.test").expect("valid"))
}

/// `spool::envelope::StoredEnvelope`: decoding arbitrary files, and
/// encode → decode of envelopes built from the input.
pub fn spool_envelope(data: &[u8]) {
    if let Some(Ok(env)) = StoredEnvelope::decode(data) {
        let offset = env.body_offset as usize;
        assert!(offset <= data.len() && data[..offset].ends_with(b"\n\n"));
        assert!(!env.recipients.is_empty());
        let mut encoded = env.encode();
        encoded.extend_from_slice(b"body");
        let mut back = StoredEnvelope::decode(&encoded)
            .expect("complete")
            .expect("re-encoded envelope decodes");
        assert_eq!(&encoded[back.body_offset as usize..], b"body");
        back.body_offset = env.body_offset;
        assert_eq!(back, env, "decode → encode → decode");
    }

    let mut input = Input::new(data);
    let flags = input.byte();
    let mut recipients = Vec::new();
    for _ in 0..1 + flags % 4 {
        let dest = match input.byte() % 4 {
            0 => Destination::Local(fuzz_mailbox(&mut input)),
            1 => Destination::Refused(if input.byte() & 1 == 0 {
                Refusal::UnknownUser
            } else {
                Refusal::BadMailboxName
            }),
            _ => Destination::Remote(fuzz_address(&mut input)),
        };
        let original = input.string();
        // Bit 0x20: DSN parameters (issue 15), the other bits as before.
        let dsn = if flags & 0x20 != 0 {
            fuzz_dsn_rcpt(&mut input)
        } else {
            Default::default()
        };
        recipients.push(Recipient {
            dest,
            original,
            dsn,
        });
    }
    let env = StoredEnvelope {
        id: QueueId(0),
        arrival: u64::from(input.u32()) << 8,
        sender: input.string(),
        recipients,
        client: input.string(),
        origin: if flags & 0x40 != 0 {
            crate::rewrite::SenderOrigin::Local
        } else {
            crate::rewrite::SenderOrigin::Other
        },
        eight_bit: flags & 0x80 != 0,
        smtputf8: false,
        requiretls: false,
        dsn: if flags & 0x20 != 0 {
            fuzz_dsn_mail(&mut input)
        } else {
            Default::default()
        },
        body_offset: 0,
    };
    let mut encoded = env.encode();
    if !env.eight_bit {
        let at = body_flag_offset(&encoded) as usize;
        assert_eq!(encoded[at], b'7', "body flag offset");
    }
    let body_at = encoded.len() as u64;
    encoded.extend_from_slice(input.rest());
    let back = StoredEnvelope::decode(&encoded)
        .expect("complete")
        .expect("encoded envelope decodes");
    assert_eq!(back.body_offset, body_at);
    assert_eq!(
        StoredEnvelope {
            body_offset: 0,
            ..back
        },
        env,
        "encode → decode"
    );
}

/// A value the SMTP parser could have accepted: no control characters.
fn dsn_text(input: &mut Input) -> String {
    input.string().chars().filter(|c| !c.is_control()).collect()
}

fn fuzz_dsn_rcpt(input: &mut Input) -> crate::smtp::dsn::DsnRcpt {
    use crate::smtp::dsn::{Notify, Orcpt};
    let b = input.byte();
    let addr = dsn_text(input);
    crate::smtp::dsn::DsnRcpt {
        notify: (b & 8 != 0).then_some(Notify {
            success: b & 1 != 0,
            failure: b & 2 != 0,
            delay: b & 4 != 0,
        }),
        orcpt: (b & 16 != 0 && !addr.is_empty()).then(|| Orcpt {
            addr_type: if b & 32 != 0 { "rfc822" } else { "utf-8" }.into(),
            addr,
        }),
    }
}

fn fuzz_dsn_mail(input: &mut Input) -> crate::smtp::dsn::DsnMail {
    use crate::smtp::dsn::Ret;
    let b = input.byte();
    let envid = dsn_text(input);
    crate::smtp::dsn::DsnMail {
        ret: match b % 3 {
            0 => None,
            1 => Some(Ret::Full),
            _ => Some(Ret::Hdrs),
        },
        envid: (b & 4 != 0).then_some(envid),
    }
}

/// `spool::envelope::decode_state`: arbitrary state files, and
/// encode → decode of states built from the input.
pub fn spool_state(data: &[u8]) {
    let mut input = Input::new(data);
    let n = usize::from(input.byte() % 8);
    let file = input.rest();
    if let Some(Progress {
        states,
        attempts,
        age,
    }) = decode_state(file, n)
    {
        assert_eq!(states.len(), n);
        assert_state_roundtrip(&states, attempts, age);
    }

    let mut input = Input::new(data);
    let n = usize::from(input.byte() % 8);
    let attempts = input.u32();
    let age = u64::from(input.u32());
    let states: Vec<RcptState> = (0..n).map(|_| state_from(&mut input)).collect();
    assert_state_roundtrip(&states, attempts, age);
}

/// A recipient state as the daemon makes them: a relay once sent, a
/// reason (every origin, a code and a status of the same class, any text)
/// when deferred or failed.
fn state_from(input: &mut Input) -> RcptState {
    use crate::delivery::outcome::{Origin, Reason, Status};
    let status = input.pick(&[
        RcptStatus::Pending,
        RcptStatus::Deferred,
        RcptStatus::Sent,
        RcptStatus::Failed,
    ]);
    let mut state = RcptState {
        status,
        ..RcptState::default()
    };
    match status {
        RcptStatus::Pending => {}
        RcptStatus::Sent => state.relay = input.string(),
        RcptStatus::Deferred | RcptStatus::Failed => {
            if input.byte().is_multiple_of(4) {
                return state;
            }
            let code = input.pick(&[421u16, 450, 451, 452, 454, 550, 553, 554, 556]);
            let reply_status = Status::new(
                (code / 100) as u8,
                (input.u32() % 1000) as u16,
                (input.u32() % 1000) as u16,
            );
            let origin = match input.byte() % 9 {
                0 => Origin::Remote {
                    relay: input.string(),
                },
                8 => Origin::Webhook {
                    url: input.string(),
                },
                k => [
                    Origin::Dns,
                    Origin::Connect,
                    Origin::Tls,
                    Origin::Timeout,
                    Origin::Protocol,
                    Origin::Local,
                    Origin::Queue,
                ]
                .into_iter()
                .nth(usize::from(k - 1))
                .unwrap_or(Origin::Queue),
            };
            state.reason = Some(Reason::new(origin, code, reply_status, input.string()));
        }
    }
    state
}

/// encode → decode gives the states back (reason texts are one line by
/// construction; relays are stored in xtext, so any relay comes back).
fn assert_state_roundtrip(states: &[RcptState], attempts: u32, age: u64) {
    let encoded = encode_state(states, attempts, age);
    assert_eq!(
        decode_state(&encoded, states.len()),
        Some(Progress {
            states: states.to_vec(),
            attempts,
            age
        }),
        "encode → decode"
    );
}

/// A file in memory (no file system): the drop reader needs a `File`.
fn memory_file(data: &[u8]) -> File {
    // SAFETY: memfd_create with a valid C string; the descriptor is owned by
    // the File from here on.
    let fd = unsafe { libc::memfd_create(c"tern-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).expect("write memfd");
    file.seek(SeekFrom::Start(0)).expect("seek memfd");
    file
}

/// `spool::drop::read_header` and the checks the daemon's import applies
/// (addresses parsed as from a remote client, recipients decided by the
/// recipient policy), then the spool envelope it would write.
pub fn spool_drop(data: &[u8]) {
    let mut file = memory_file(data);
    let Ok(head) = crate::spool::drop::read_header(&mut file) else {
        return;
    };
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a header ends at an empty line");
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).expect("read memfd");
    assert_eq!(rest, &data[end + 2..], "the file is left at the message");
    assert!(!head.recipients.is_empty());
    assert!(!head.sender.contains('\n'));
    assert!(head.recipients.iter().all(|r| !r.contains('\n')));

    // As daemon::drop::import_drop does.
    let sender = if head.sender.is_empty() {
        String::new()
    } else {
        match Address::parse_mailbox(&head.sender) {
            Ok(a) => {
                check_address(&a);
                a.to_string()
            }
            Err(_) => return,
        }
    };
    let aliases = Aliases::parse(FUZZ_ALIASES).0;
    let users = fuzz_users();
    let policy = RecipientPolicy {
        is_local_domain: &is_fuzz_local,
        aliases: &aliases,
        users: &users,
        any_local: false,
    };
    let mut decided = Vec::new();
    for r in &head.recipients {
        let parsed = if r.contains('@') {
            Address::parse_mailbox(r)
        } else {
            Address::parse_mailbox(&format!("{r}@mx.local.test"))
        };
        let Ok(a) = parsed else {
            return;
        };
        check_address(&a);
        let original = a.to_string();
        let destinations = if is_fuzz_local(&a.domain) {
            policy
                .resolve_local(&a.local)
                .unwrap_or_else(|why| vec![Destination::Refused(why)])
        } else {
            vec![Destination::Remote(a)]
        };
        assert!(!destinations.is_empty(), "{r:?} decided to go nowhere");
        for dest in destinations {
            push_unique(&mut decided, dest, &original);
        }
    }
    let env = StoredEnvelope {
        id: QueueId(0),
        arrival: 1_795_000_000,
        sender,
        recipients: decided
            .into_iter()
            .map(|(dest, original)| Recipient {
                dest,
                original,
                dsn: Default::default(),
            })
            .collect(),
        client: "local uid 1000".into(),
        origin: crate::rewrite::SenderOrigin::Local,
        eight_bit: false,
        smtputf8: false,
        requiretls: false,
        dsn: Default::default(),
        body_offset: 0,
    };
    let encoded = env.encode();
    let back = StoredEnvelope::decode(&encoded)
        .expect("complete")
        .expect("decodes");
    assert_eq!(
        StoredEnvelope {
            body_offset: 0,
            ..back
        },
        env
    );
}
