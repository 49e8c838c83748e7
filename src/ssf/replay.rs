//! Replayed SETs: a `jti` seen from an issuer within the window is refused.
//!
//! The window is `ssf.max_age`: a SET older than that is refused for its age anyway, so its
//! `jti` need not be remembered longer. Memory is bounded by `capacity`; when it is full of
//! `jti`s still inside the window, new SETs are answered "try again later" (503) rather than
//! taken without the check, and the transmitter delivers them again.
//!
//! A `jti` is claimed when its SET is checked, so that two deliveries of one SET at once are
//! not both taken, and released when its write fails: the transmitter will deliver it again,
//! and it must not be refused as a replay then.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What [`Replays::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Replayed,
    Full,
}

pub struct Replays {
    window_secs: u64,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (issuer, jti) → when it was taken.
    seen: HashMap<(String, String), u64>,
    /// The same keys, oldest first, for expiry.
    order: VecDeque<(u64, (String, String))>,
}

impl Replays {
    pub fn new(window_secs: u64, capacity: usize) -> Self {
        Self {
            window_secs,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Claims `jti` of `iss` at `now`: `New` (and remembered) unless seen within the window
    /// or the memory is full.
    pub fn claim(&self, iss: &str, jti: &str, now: u64) -> Seen {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let key = (iss.to_string(), jti.to_string());
        if inner.seen.contains_key(&key) {
            return Seen::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return Seen::Full;
        }
        inner.seen.insert(key.clone(), now);
        inner.order.push_back((now, key));
        Seen::New
    }

    /// Forgets a claim whose SET was not taken after all.
    pub fn release(&self, iss: &str, jti: &str) {
        self.lock().seen.remove(&(iss.to_string(), jti.to_string()));
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner, now: u64) {
        while let Some((at, _)) = inner.order.front() {
            if now.saturating_sub(*at) <= self.window_secs {
                break;
            }
            if let Some((at, key)) = inner.order.pop_front() {
                // A released and claimed-again key has a newer claim: it stays.
                if inner.seen.get(&key) == Some(&at) {
                    inner.seen.remove(&key);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (each step is one insert
        // or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_within_the_window_and_forgotten_after() {
        let r = Replays::new(60, 10);
        assert_eq!(r.claim("iss", "a", 1_000), Seen::New);
        assert_eq!(r.claim("iss", "a", 1_030), Seen::Replayed);
        assert_eq!(
            r.claim("other-iss", "a", 1_030),
            Seen::New,
            "jti is per issuer"
        );
        assert_eq!(
            r.claim("iss", "a", 1_061),
            Seen::New,
            "forgotten after the window"
        );
        assert_eq!(r.len(), 2, "the other issuer's a (at 1,030) and the new a");
        assert_eq!(r.claim("iss", "b", 2_000), Seen::New);
        assert_eq!(r.len(), 1, "the rest expired");
    }

    #[test]
    fn a_released_claim_may_be_claimed_again_and_keeps_its_new_time() {
        let r = Replays::new(60, 10);
        assert_eq!(r.claim("iss", "a", 0), Seen::New);
        r.release("iss", "a");
        assert_eq!(
            r.claim("iss", "a", 50),
            Seen::New,
            "a failed write is no replay"
        );
        assert_eq!(
            r.claim("iss", "a", 70),
            Seen::Replayed,
            "the first claim's expiry does not end the second"
        );
    }

    #[test]
    fn a_full_memory_says_so_instead_of_forgetting() {
        let r = Replays::new(60, 2);
        r.claim("iss", "a", 0);
        r.claim("iss", "b", 10);
        assert_eq!(r.claim("iss", "c", 20), Seen::Full);
        assert_eq!(r.claim("iss", "a", 20), Seen::Replayed);
        assert_eq!(r.claim("iss", "c", 61), Seen::New, "a expired, room for c");
    }
}
