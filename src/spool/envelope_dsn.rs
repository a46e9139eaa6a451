//! The DSN parameters (RFC 3461) in the spool envelope (issue 15).
//!
//! Written only when the client gave them, so every other file is
//! byte-identical to before, and a file without them (every file written
//! earlier) loads with none:
//!
//! ```text
//! rcpt remote LOCAL DOMAIN ORIGINAL notify=SUCCESS,FAILURE orcpt=rfc822;XTEXT
//! ret hdrs                                (or `ret full`)
//! envid XTEXT
//! ```
//!
//! The recipient's fields are `key=value` after the positional ones: an
//! xtext value never holds `=` (it is written `+3D`), so the two kinds
//! cannot be confused. A daemon older than these lines refuses such a
//! file as damaged (it keeps it in the spool).

use crate::smtp::dsn::{xtext_decode, DsnMail, DsnRcpt, Notify, Orcpt, Ret, Xtext};

/// The ` notify=... orcpt=...` suffix of a recipient line ("" for none).
pub fn write_rcpt_suffix(s: &mut impl std::fmt::Write, dsn: &DsnRcpt) -> std::fmt::Result {
    if let Some(n) = dsn.notify {
        write!(s, " notify={n}")?;
    }
    if let Some(o) = &dsn.orcpt {
        write!(s, " orcpt={o}")?;
    }
    Ok(())
}

/// One `key=value` field of a recipient line.
pub fn rcpt_field(dsn: &mut DsnRcpt, field: &str) -> Option<()> {
    let (key, value) = field.split_once('=')?;
    match key {
        "notify" if dsn.notify.is_none() => dsn.notify = Some(Notify::parse(value.as_bytes())?),
        "orcpt" if dsn.orcpt.is_none() => dsn.orcpt = Some(Orcpt::parse(value.as_bytes())?),
        _ => return None,
    }
    Some(())
}

/// The `ret` and `envid` lines ("" for none).
pub fn write_mail_lines(s: &mut impl std::fmt::Write, dsn: &DsnMail) -> std::fmt::Result {
    if let Some(ret) = dsn.ret {
        s.write_str(match ret {
            Ret::Full => "ret full\n",
            Ret::Hdrs => "ret hdrs\n",
        })?;
    }
    if let Some(envid) = &dsn.envid {
        writeln!(s, "envid {}", Xtext(envid))?;
    }
    Ok(())
}

/// A `ret` or `envid` line's value; `None` when malformed or repeated.
pub fn mail_line(dsn: &mut DsnMail, key: &str, value: &str) -> Option<()> {
    match key {
        "ret" if dsn.ret.is_none() => {
            dsn.ret = Some(match value {
                "full" => Ret::Full,
                "hdrs" => Ret::Hdrs,
                _ => return None,
            })
        }
        "envid" if dsn.envid.is_none() => dsn.envid = Some(xtext_decode(value.as_bytes())?),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests index fixed data
mod tests {
    use crate::delivery::{Destination, Mailbox};
    use crate::smtp::address::Address;
    use crate::smtp::dsn::{DsnMail, DsnRcpt, Notify, Orcpt, Ret};
    use crate::spool::envelope::{Recipient, StoredEnvelope};
    use crate::spool::QueueId;

    fn env(dsn: DsnMail, rdsn: DsnRcpt) -> StoredEnvelope {
        StoredEnvelope {
            id: QueueId(0),
            arrival: 5,
            sender: "s@x.test".into(),
            recipients: vec![
                Recipient {
                    dest: Destination::Remote(Address::parse_mailbox("a@y.test").unwrap()),
                    original: "a@y.test".into(),
                    dsn: rdsn,
                },
                Recipient {
                    dest: Destination::Local(Mailbox::new("joe").unwrap()),
                    original: "joe@here.test".into(),
                    dsn: DsnRcpt::default(),
                },
            ],
            client: "c [1.2.3.4]".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: false,
            smtputf8: false,
            requiretls: false,
            dsn,
            body_offset: 0,
        }
    }

    fn roundtrip(e: &StoredEnvelope) -> StoredEnvelope {
        let mut bytes = e.encode();
        bytes.extend_from_slice(b"content");
        let mut back = StoredEnvelope::decode(&bytes).unwrap().unwrap();
        assert_eq!(&bytes[back.body_offset as usize..], b"content");
        back.body_offset = 0;
        back
    }

    #[test]
    fn dsn_parameters_roundtrip_through_the_spool() {
        let e = env(
            DsnMail {
                ret: Some(Ret::Full),
                envid: Some("id with space+=x".into()),
            },
            DsnRcpt {
                notify: Some(Notify {
                    success: true,
                    failure: false,
                    delay: true,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    addr: "o=r+ig@z.test".into(),
                }),
            },
        );
        let text = String::from_utf8(e.encode()).unwrap();
        assert!(
            text.contains("rcpt remote a y.test a@y.test notify=SUCCESS,DELAY orcpt=rfc822;o+3Dr+2Big@z.test\n"),
            "{text}"
        );
        assert!(
            text.contains("ret full\nenvid id+20with+20space+2B+3Dx\n"),
            "{text}"
        );
        assert_eq!(roundtrip(&e), e);
        let never = env(
            DsnMail {
                ret: Some(Ret::Hdrs),
                envid: None,
            },
            DsnRcpt {
                notify: Some(Notify::NEVER),
                orcpt: None,
            },
        );
        assert_eq!(roundtrip(&never), never);
    }

    #[test]
    fn without_dsn_parameters_the_file_is_as_before() {
        let e = env(DsnMail::default(), DsnRcpt::default());
        let text = String::from_utf8(e.encode()).unwrap();
        assert_eq!(
            text,
            "tern-queue 2\narrival 5\nsender s@x.test\nrcpt remote a y.test a@y.test\n\
             rcpt local joe joe@here.test\nclient c+20[1.2.3.4]\nbody 7bit\n\n"
        );
        assert_eq!(roundtrip(&e), e);
    }

    #[test]
    fn malformed_dsn_lines_are_errors() {
        for bad in [
            "rcpt remote a y.test a@y.test notify=SOMETIMES\n",
            "rcpt remote a y.test a@y.test notify=NEVER notify=NEVER\n",
            "rcpt remote a y.test a@y.test orcpt=rfc822\n",
            "rcpt remote a y.test a@y.test size=1\n",
            "rcpt remote a y.test a@y.test\nret body\n",
            "rcpt remote a y.test a@y.test\nenvid a+0Ab\n",
        ] {
            let file = format!("tern-queue 2\narrival 5\nsender s@x.test\n{bad}body 7bit\n\n");
            assert!(
                StoredEnvelope::decode(file.as_bytes()).unwrap().is_err(),
                "{bad}"
            );
        }
    }

    /// The fuzz target's properties (encode → decode is the identity,
    /// decode → encode → decode too) for envelopes with DSN fields.
    #[test]
    fn random_envelopes_with_dsn_fields_roundtrip() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for n in 0..3000 {
            let mut data = Vec::with_capacity(200);
            for _ in 0..(n % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push((x >> 24) as u8);
            }
            if let Some(first) = data.first_mut() {
                *first |= 0x20;
            }
            crate::fuzz_targets::spool_envelope(&data);
        }
    }
}
