//! DKIM signing of outbound jobs before they are given a connection slot
//! (see `dkim` for what is signed and why at delivery).
//!
//! A job submitted while `dkim_keys` has keys waits here; at most
//! [`MAX_SIGNING`] jobs have their spool file open at once, and each turn
//! of the loop moves at most [`SIGN_BYTES_PER_TURN`] octets in all through
//! their [`MessageSigner`]s, so a large message never holds the loop for a
//! whole file. A job whose `From:` domain has no key stops after its
//! header. A job that cannot be signed (unreadable file, oversized header)
//! goes out unsigned, logged: signing never keeps mail from leaving.

use std::collections::VecDeque;
use std::io::Read as _;

use crate::dkim::sign::{MessageSigner, Signed};
use crate::dkim::KeyMap;
use crate::outbound::Job;
use crate::spool::Spool;

/// Jobs whose spool file is open for signing at once.
pub const MAX_SIGNING: usize = 4;
/// Octets read for signing per loop turn, over all jobs.
pub const SIGN_BYTES_PER_TURN: usize = 128 * 1024;
/// Octets read per step.
const SIGN_CHUNK: usize = 16 * 1024;

struct Active {
    job: Job,
    file: crate::spool::Content,
    signer: MessageSigner,
}

#[derive(Default)]
pub struct Signing {
    keys: KeyMap,
    waiting: VecDeque<Job>,
    active: Vec<Active>,
    chunk: Vec<u8>,
}

impl Signing {
    pub fn new(keys: KeyMap) -> Signing {
        Signing {
            keys,
            ..Signing::default()
        }
    }

    /// On reload: the new keys (jobs in progress finish with the old).
    pub fn set_keys(&mut self, keys: KeyMap) {
        self.keys = keys;
    }

    /// Jobs are signed before they go.
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn submit(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Jobs here (the runner's backlog counts them).
    pub fn len(&self) -> usize {
        self.waiting.len() + self.active.len()
    }

    /// Work is left for the next turn.
    pub fn is_busy(&self) -> bool {
        self.len() > 0
    }

    /// At shutdown: jobs not yet signed stay in the spool for the restart,
    /// like jobs waiting for a slot.
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.active.clear();
    }

    /// One turn's work; returns the jobs ready to go (signed or not).
    /// `now`: Unix seconds for `t=` (`None`: the clock is not trusted).
    pub fn turn(&mut self, spool: &Spool, now: Option<u64>) -> Vec<Job> {
        let mut ready = Vec::new();
        while self.active.len() < MAX_SIGNING {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            match spool.open_content(job.id) {
                Ok((file, _)) => {
                    let signer = MessageSigner::new(job.rewrite.clone(), job.eight_bit);
                    self.active.push(Active { job, file, signer });
                }
                Err(e) => {
                    log::warn!("{}: dkim: cannot read queue file: {e}; not signed", job.id);
                    ready.push(job);
                }
            }
        }
        if self.chunk.len() != SIGN_CHUNK {
            self.chunk.resize(SIGN_CHUNK, 0);
        }
        let mut budget = SIGN_BYTES_PER_TURN;
        let i = 0;
        while i < self.active.len() && budget > 0 {
            let Some(a) = self.active.get_mut(i) else {
                break;
            };
            let mut done = None;
            while budget > 0 {
                if let Some(early) = a.signer.early_result(&self.keys) {
                    done = Some(early);
                    break;
                }
                match a.file.read(&mut self.chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        a.signer.push(self.chunk.get(..n).unwrap_or_default());
                        budget = budget.saturating_sub(n);
                    }
                    Err(e) => {
                        done = Some(Signed::Failed(format!("reading queue file: {e}")));
                        break;
                    }
                }
            }
            if budget == 0 && done.is_none() {
                // Out of budget mid-file: this job goes on next turn, after
                // the others (a short message does not wait for a long one).
                self.active.rotate_left(1);
                break;
            }
            let a = self.active.remove(i);
            let signed = match done {
                Some(s) => s,
                None => a.signer.finish(&self.keys, now),
            };
            let mut job = a.job;
            match signed {
                Signed::Yes(sigs) => {
                    log::debug!("{}: dkim: signed", job.id);
                    job.dkim = Some(std::rc::Rc::new(sigs));
                }
                Signed::NoKey => {}
                Signed::Failed(why) => log::warn!("{}: dkim: not signed: {why}", job.id),
            }
            ready.push(job);
        }
        ready
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::dkim::{DkimKeys, SigningKey};
    use crate::spool::envelope::{Recipient, StoredEnvelope};
    use crate::spool::QueueId;

    fn store(spool: &mut Spool, message: &[u8]) -> QueueId {
        let env = StoredEnvelope {
            id: QueueId(0),
            arrival: 1_795_000_000,
            sender: "a@example.com".into(),
            recipients: vec![Recipient {
                dest: crate::delivery::Destination::Remote(
                    crate::smtp::address::Address::parse_mailbox("x@y.test").unwrap(),
                ),
                original: "x@y.test".into(),
                dsn: Default::default(),
            }],
            client: "helo [127.0.0.1]".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: false,
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
            body_offset: 0,
        };
        let mut inc = spool.create(&env).unwrap();
        inc.write(message).unwrap();
        spool.commit(vec![inc]).pop().unwrap().unwrap()
    }

    fn job(id: QueueId) -> Job {
        Job {
            id,
            domain: "y.test".into(),
            sender: "a@example.com".into(),
            recipients: vec![(0, "x@y.test".into())],
            size: 0,
            eight_bit: false,
            utf8_content: false,
            requiretls: false,
            arrival: 0,
            rewrite: None,
            relay: None,
            lmtp: None,
            dkim: None,
            dsn: Default::default(),
        }
    }

    #[test]
    fn bounded_turns_and_a_short_message_does_not_wait_for_a_long_one() {
        let dir = crate::test_dir::TempDir::new("signing");
        let mut spool = Spool::open(&dir.0, false).unwrap();
        let mut big = b"From: a@example.com\r\nSubject: big\r\n\r\n".to_vec();
        while big.len() < 5 * SIGN_BYTES_PER_TURN {
            big.extend_from_slice(b"0123456789 abcdefghij\r\n");
        }
        let big = store(&mut spool, &big);
        let other = store(&mut spool, b"From: c@other.test\r\n\r\nx\r\n");
        let small = store(&mut spool, b"From: a@example.com\r\n\r\nsmall\r\n");
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
        let keys = DkimKeys::single("example.com", "s", SigningKey::Ed25519(key));
        let mut signing = Signing::new(std::rc::Rc::new(keys));
        for id in [big, other, small] {
            signing.submit(job(id));
        }
        assert_eq!(signing.len(), 3);
        // Turn 1: the big one takes the whole budget and goes to the back.
        assert!(signing.turn(&spool, Some(1)).is_empty());
        // Turn 2: the other two are done, unsigned and signed.
        let done = signing.turn(&spool, Some(1));
        let ids: Vec<(QueueId, bool)> = done.iter().map(|j| (j.id, j.dkim.is_some())).collect();
        assert_eq!(ids, [(other, false), (small, true)]);
        let mut turns = 2;
        let signed = loop {
            turns += 1;
            assert!(turns < 20, "never done");
            if let Some(j) = signing.turn(&spool, Some(1)).pop() {
                break j;
            }
        };
        assert!(turns >= 6, "{turns} turns for 5 budgets");
        assert_eq!(signed.id, big);
        assert!(signed.dkim.is_some() && !signing.is_busy());
    }

    #[test]
    fn unreadable_message_goes_unsigned() {
        let dir = crate::test_dir::TempDir::new("signing-gone");
        let spool = Spool::open(&dir.0, false).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
        let keys = DkimKeys::single("example.com", "s", SigningKey::Ed25519(key));
        let mut signing = Signing::new(std::rc::Rc::new(keys));
        signing.submit(job(QueueId(12345)));
        let done = signing.turn(&spool, None);
        assert_eq!(done.len(), 1);
        assert!(done[0].dkim.is_none());
    }
}
