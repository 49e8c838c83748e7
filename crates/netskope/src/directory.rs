//! A mirror of the tenant's directory (user name → id), and the choice of when to build it.
//!
//! A deactivation needs two requests when the user is resolved with its own filtered
//! `GET /Users`: the resolve and the PATCH. Listing the directory page by page
//! (`startIndex`/`count`, `attributes=id,userName,active`) costs one request per
//! `directory_page_size` users, whatever the number of names it then answers. The client lists
//! only when that is the cheaper way: when more resolves are expected
//! ([`Demand`], announced by the pipeline as events arrive) than the listing has pages, or when
//! a listing younger than `user_cache_ttl` can answer for free. A trickle of events therefore
//! never lists, and a burst lists once.
//!
//! A mirror is never less safe than a filtered resolve:
//! * a name it lacks is resolved with a filter (the user may be new);
//! * a name two users share in different case is ambiguous, as the filter would find both;
//! * only a listing that reached its end is used, since a partial one could hold one spelling
//!   of a name and not the other;
//! * its ids are as old as the id cache already allowed (`user_cache_ttl`), and a PATCH that
//!   finds an id gone resolves that name afresh, with a filter, before failing.
//!
//! Memory per user is bounded: 16 bytes of index plus the name and id themselves in one
//! shared string (names over 512 characters and ids over 256 bytes are left to the filter),
//! and `directory_max_users` caps the number of users.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use offboarder_base::metric_names as names;

use super::NetskopeClient;
use super::user::{ScimUser, UserRef};

/// Longest user name kept in the mirror (the longest a resolve accepts).
const MAX_NAME_CHARS: usize = 512;
/// Longest id kept in the mirror; SCIM ids are usually UUIDs (36 bytes).
const MAX_ID_BYTES: usize = 256;

/// The directory settings of `[netskope]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub enabled: bool,
    pub page_size: usize,
    pub max_users: usize,
    /// How long a listing answers for names: the id cache's TTL, so that a mirrored id is
    /// never older than a cached one could be.
    pub fresh_for: Duration,
}

/// One resolve the pipeline expects to make (an event that will name a user). Counted while
/// it lives: the count is what a listing would save.
#[derive(Debug)]
pub struct Demand(Arc<AtomicUsize>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a name's lookup in a mirror found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(UserRef),
    /// This many users carry the name, in different case.
    Ambiguous(usize),
    Missing,
}

/// One user of a [`Mirror`]: where its name and id sit in the shared string.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// A hash of the lowercased name (the mirror's own keys, so crafted names cannot collide
    /// on purpose); equal hashes are told apart by the names themselves.
    hash: u32,
    start: u32,
    name_len: u16,
    id_len: u16,
    /// 0 unknown, 1 inactive, 2 active, as the listing saw it.
    active: u8,
}

/// A complete listing of the directory, compact and read-only.
#[derive(Debug)]
pub(crate) struct Mirror {
    keys: RandomState,
    text: String,
    /// Sorted by `hash`.
    entries: Vec<Entry>,
}

impl Mirror {
    fn hash(keys: &RandomState, lowercased: &str) -> u32 {
        // The low half of a 64-bit SipHash; collisions only cost a comparison.
        keys.hash_one(lowercased) as u32
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, for the gauge and the benchmark.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    fn name_of(&self, e: &Entry) -> &str {
        let start = e.start as usize;
        &self.text[start..start + usize::from(e.name_len)]
    }

    fn id_of(&self, e: &Entry) -> &str {
        let start = e.start as usize + usize::from(e.name_len);
        &self.text[start..start + usize::from(e.id_len)]
    }

    /// The user named `name`, compared without case, as the filtered resolve compares.
    pub(crate) fn lookup(&self, name: &str) -> Lookup {
        let lowered = name.to_lowercase();
        let hash = Self::hash(&self.keys, &lowered);
        let first = self.entries.partition_point(|e| e.hash < hash);
        let mut found: Option<&Entry> = None;
        let mut ids: Vec<&str> = Vec::new();
        for e in self.entries[first..].iter().take_while(|e| e.hash == hash) {
            let stored = self.name_of(e);
            if stored != name && stored.to_lowercase() != lowered {
                continue;
            }
            // A user seen twice (the directory shifted between two pages) is one user.
            let id = self.id_of(e);
            if !ids.contains(&id) {
                ids.push(id);
                found = Some(e);
            }
        }
        match (ids.len(), found) {
            (1, Some(e)) => Lookup::Found(UserRef {
                id: self.id_of(e).to_string(),
                user_name: self.name_of(e).to_string(),
                active: match e.active {
                    1 => Some(false),
                    2 => Some(true),
                    _ => None,
                },
            }),
            (0, _) | (_, None) => Lookup::Missing,
            (n, _) => Lookup::Ambiguous(n),
        }
    }
}

/// Collects a listing's pages into a [`Mirror`].
#[derive(Debug)]
pub(crate) struct MirrorBuilder {
    mirror: Mirror,
    /// Users left to the filtered resolve: a name or id too long to keep.
    pub(crate) skipped: usize,
}

impl MirrorBuilder {
    pub(crate) fn new() -> Self {
        Self {
            mirror: Mirror {
                keys: RandomState::new(),
                text: String::new(),
                entries: Vec::new(),
            },
            skipped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.mirror.entries.len()
    }

    /// Makes room for `users` more, at the size per user seen so far (a tenth more), so that
    /// a large listing does not double its buffers on the way: their peak stays near the
    /// mirror's final size.
    pub(crate) fn reserve(&mut self, users: usize) {
        let m = &mut self.mirror;
        let per_user = m.text.len().div_ceil(m.entries.len().max(1));
        m.entries.reserve(users);
        m.text.reserve(users * per_user + users * per_user / 10);
    }

    pub(crate) fn push(&mut self, user: &ScimUser) {
        let m = &mut self.mirror;
        let (Ok(name_len), Ok(id_len), Ok(start)) = (
            u16::try_from(user.user_name.len()),
            u16::try_from(user.id.len()),
            u32::try_from(m.text.len()),
        ) else {
            self.skipped += 1;
            return;
        };
        if user.user_name.chars().count() > MAX_NAME_CHARS
            || user.id.len() > MAX_ID_BYTES
            || user.id.is_empty()
            || start
                .checked_add(u32::from(name_len) + u32::from(id_len))
                .is_none()
        {
            self.skipped += 1;
            return;
        }
        m.text.push_str(&user.user_name);
        m.text.push_str(&user.id);
        m.entries.push(Entry {
            hash: Mirror::hash(&m.keys, &user.user_name.to_lowercase()),
            start,
            name_len,
            id_len,
            active: match user.active {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            },
        });
    }

    pub(crate) fn finish(self) -> Mirror {
        let mut m = self.mirror;
        m.entries.sort_unstable_by_key(|e| e.hash);
        m.entries.shrink_to_fit();
        m.text.shrink_to_fit();
        m
    }
}

/// What a resolve does next.
pub(crate) enum Plan {
    /// The mirror answered.
    Answer(Lookup),
    /// A listing runs: wait for its end, then plan again.
    Wait(watch::Receiver<u64>),
    /// List the directory now (this resolve drives the listing).
    List(Listing),
    /// Resolve this name with a filter.
    Filter,
}

/// The right, and the duty, to list the directory: dropping it (done, failed or cancelled)
/// lets the resolves that wait for it go on.
pub(crate) struct Listing {
    directory: Arc<Directory>,
}

impl Listing {
    /// Whether `pages` more requests are worth it for the resolves now expected.
    pub(crate) fn worth(&self, pages: usize) -> bool {
        self.directory.demand() > pages
    }

    pub(crate) fn settings(&self) -> Settings {
        self.directory.settings
    }

    pub(crate) fn done(self, mirror: Mirror) {
        let mut s = self.directory.lock();
        metrics::gauge!(names::DIRECTORY_USERS).set(mirror.len() as f64);
        s.mirror = Some((Arc::new(mirror), Instant::now()));
        s.listings += 1;
    }

    pub(crate) fn failed(self) {
        self.directory.lock().failed_at = Some(Instant::now());
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.directory.lock().listing = false;
        self.directory.changed.send_modify(|n| *n += 1);
    }
}

/// The mirror, the demand for resolves, and whether a listing runs.
#[derive(Debug)]
pub(crate) struct Directory {
    settings: Settings,
    demand: Arc<AtomicUsize>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    mirror: Option<(Arc<Mirror>, Instant)>,
    listing: bool,
    /// The tenant's number of users, from the last `totalResults` seen.
    users: Option<usize>,
    /// When a listing last failed: none is tried again for `fresh_for`.
    failed_at: Option<Instant>,
    /// Listings completed, for tests and the log.
    listings: u64,
}

impl Directory {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            demand: Arc::new(AtomicUsize::new(0)),
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values; a poisoned lock still holds a usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn expect_resolve(&self) -> Demand {
        self.demand.fetch_add(1, Ordering::Relaxed);
        Demand(self.demand.clone())
    }

    pub(crate) fn demand(&self) -> usize {
        self.demand.load(Ordering::Relaxed)
    }

    /// Records a `totalResults` of an unfiltered list (the readiness probe's, say).
    pub(crate) fn saw_total(&self, total: usize) {
        self.lock().users = Some(total);
    }

    pub(crate) fn listings(&self) -> u64 {
        self.lock().listings
    }

    /// The users in the current mirror (a stale one is dropped at the next resolve).
    pub(crate) fn mirrored(&self) -> Option<usize> {
        self.lock().mirror.as_ref().map(|(m, _)| m.len())
    }

    /// Pages a full listing takes, when the tenant's size is known.
    fn pages(&self, users: usize) -> usize {
        users.div_ceil(self.settings.page_size).max(1)
    }

    /// Decides how to resolve `name` (already checked, not in the id cache).
    pub(crate) fn plan(self: &Arc<Self>, name: &str) -> Plan {
        if !self.settings.enabled {
            return Plan::Filter;
        }
        let mut s = self.lock();
        let now = Instant::now();
        if let Some((mirror, at)) = &s.mirror {
            if now < *at + self.settings.fresh_for {
                return match mirror.lookup(name) {
                    Lookup::Missing => Plan::Filter,
                    found => Plan::Answer(found),
                };
            }
            // Stale: it answers nothing any more, so its memory goes now.
            s.mirror = None;
            metrics::gauge!(names::DIRECTORY_USERS).set(0.0);
        }
        if s.listing {
            return Plan::Wait(self.changed.subscribe());
        }
        if s.failed_at
            .is_some_and(|t| now < t + self.settings.fresh_for)
        {
            return Plan::Filter;
        }
        let demand = self.demand();
        let worth = match s.users {
            Some(users) => users <= self.settings.max_users && demand > self.pages(users),
            // Unknown size: the listing's first page tells it, for one request.
            None => demand > 1,
        };
        if !worth {
            return Plan::Filter;
        }
        s.listing = true;
        Plan::List(Listing {
            directory: self.clone(),
        })
    }
}

/// Pages of one listing requested at once, once the first page has told how many there are:
/// the budget paces them anyway, and a slow server then costs one round trip per eight pages.
const PAGES_AT_ONCE: usize = 8;

impl NetskopeClient {
    /// Lists the directory for `listing`, and hands the mirror over only when the listing
    /// reached its end. The first page tells the tenant's size; the listing stops there,
    /// mirroring nothing, when it is no longer worth its pages or the tenant is over
    /// `directory_max_users`. The other pages are then asked for several at a time; a server
    /// that gives no `totalResults` is listed one page after another until an empty page.
    pub(crate) async fn list_directory(&self, listing: Listing) {
        let started = Instant::now();
        let result = self.collect_directory(&listing).await;
        let outcome = match result {
            Ok(Some((mirror, pages))) => {
                tracing::info!(
                    users = mirror.len(),
                    bytes = mirror.heap_bytes(),
                    pages,
                    took_ms = started.elapsed().as_millis() as u64,
                    "directory listed: names resolve from it for user_cache_ttl"
                );
                listing.done(mirror);
                "complete"
            }
            Ok(None) => "not_worth_it",
            Err(reason) => {
                tracing::warn!(%reason, "directory listing failed; names are resolved one by one until user_cache_ttl has passed");
                listing.failed();
                "failed"
            }
        };
        metrics::counter!(names::DIRECTORY_LISTINGS, "result" => outcome).increment(1);
    }

    async fn collect_directory(
        &self,
        listing: &Listing,
    ) -> Result<Option<(Mirror, usize)>, String> {
        let settings = listing.settings();
        let mut builder = MirrorBuilder::new();
        let first = self
            .list_users_page(1, settings.page_size)
            .await
            .map_err(|e| e.to_string())?;
        let served = first.resources.len();
        let mut check = PageCheck::new(settings.max_users);
        check.add(&mut builder, &first.resources)?;
        let Some(total) = first.total_results else {
            // Without a total, one page after another until an empty one.
            let mut start = 1 + served;
            let mut pages = 1;
            let mut last = served;
            while last > 0 {
                let page = self
                    .list_users_page(start, settings.page_size)
                    .await
                    .map_err(|e| e.to_string())?;
                pages += 1;
                last = page.resources.len();
                check.add(&mut builder, &page.resources)?;
                start += last;
            }
            return Ok(Some((builder.finish(), pages)));
        };
        if served == 0 && total > 0 {
            return Err(format!("the first page is empty, of {total} users"));
        }
        let per_page = served.max(1);
        let starts: Vec<usize> = (1 + served..=total).step_by(per_page).collect();
        if total > settings.max_users || !listing.worth(starts.len()) {
            tracing::debug!(
                total,
                "directory listing stopped after its first page: not worth it"
            );
            return Ok(None);
        }
        let pages = 1 + starts.len();
        builder.reserve(total.saturating_sub(served).min(settings.max_users));
        let mut rest = futures::stream::iter(starts)
            .map(|start| self.list_users_page(start, per_page))
            .buffered(PAGES_AT_ONCE);
        while let Some(page) = rest.next().await {
            let page = page.map_err(|e| e.to_string())?;
            check.add(&mut builder, &page.resources)?;
        }
        Ok(Some((builder.finish(), pages)))
    }
}

/// What a listing's pages must look like for its mirror to be used.
struct PageCheck {
    max_users: usize,
    previous_first: Option<String>,
}

impl PageCheck {
    fn new(max_users: usize) -> Self {
        Self {
            max_users,
            previous_first: None,
        }
    }

    fn add(&mut self, builder: &mut MirrorBuilder, page: &[ScimUser]) -> Result<(), String> {
        if let Some(first) = page.first() {
            if self.previous_first.as_deref() == Some(first.id.as_str()) {
                return Err("the server answered the same page for another startIndex".into());
            }
            self.previous_first = Some(first.id.clone());
        }
        for user in page {
            builder.push(user);
        }
        if builder.len() + builder.skipped > self.max_users {
            return Err(format!(
                "more than netskope.directory_max_users ({}) users",
                self.max_users
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, id: &str, active: Option<bool>) -> ScimUser {
        ScimUser {
            id: id.into(),
            user_name: name.into(),
            active,
        }
    }

    fn mirror(users: &[ScimUser]) -> Mirror {
        let mut b = MirrorBuilder::new();
        for u in users {
            b.push(u);
        }
        b.finish()
    }

    #[test]
    fn names_match_without_case_and_keep_the_servers_spelling() {
        let m = mirror(&[
            user("Alice@Corp.com", "a1", Some(true)),
            user("bob@corp.com", "b1", Some(false)),
        ]);
        let Lookup::Found(alice) = m.lookup("alice@corp.com") else {
            panic!("alice is mirrored");
        };
        assert_eq!(alice.id, "a1");
        assert_eq!(alice.user_name, "Alice@Corp.com");
        assert_eq!(alice.active, Some(true));
        assert!(matches!(m.lookup("BOB@corp.com"), Lookup::Found(u) if u.active == Some(false)));
        assert_eq!(m.lookup("carol@corp.com"), Lookup::Missing);
    }

    #[test]
    fn two_users_whose_names_differ_in_case_are_ambiguous_but_one_seen_twice_is_not() {
        let m = mirror(&[
            user("dana@corp.com", "d1", None),
            user("Dana@corp.com", "d2", None),
            user("erin@corp.com", "e1", None),
            user("erin@corp.com", "e1", None),
        ]);
        assert_eq!(m.lookup("DANA@corp.com"), Lookup::Ambiguous(2));
        assert!(matches!(m.lookup("erin@corp.com"), Lookup::Found(u) if u.id == "e1"));
    }

    #[test]
    fn names_and_ids_too_long_to_keep_are_left_to_the_filter() {
        let long_name = "x".repeat(MAX_NAME_CHARS + 1);
        let long_id = "i".repeat(MAX_ID_BYTES + 1);
        let mut b = MirrorBuilder::new();
        b.push(&user(&long_name, "n1", None));
        b.push(&user("f@corp.com", &long_id, None));
        b.push(&user("g@corp.com", "", None));
        b.push(&user("h@corp.com", "h1", None));
        assert_eq!(b.skipped, 3);
        let m = b.finish();
        assert_eq!(m.len(), 1);
        assert_eq!(m.lookup(&long_name), Lookup::Missing);
        assert_eq!(m.lookup("f@corp.com"), Lookup::Missing);
    }

    #[test]
    fn a_hundred_thousand_users_take_under_ninety_bytes_each() {
        let mut b = MirrorBuilder::new();
        for i in 0..100_000 {
            b.push(&user(
                &format!("user{i}@example.com"),
                &format!("00000000-0000-4000-8000-{i:012}"),
                Some(true),
            ));
        }
        let m = b.finish();
        let per_user = m.heap_bytes() / m.len();
        assert!(per_user < 90, "{per_user} bytes per user");
        assert!(
            matches!(m.lookup("USER99999@example.com"), Lookup::Found(u) if u.id.ends_with("099999"))
        );
    }

    fn directory(enabled: bool) -> Arc<Directory> {
        Arc::new(Directory::new(Settings {
            enabled,
            page_size: 100,
            max_users: 1_000,
            fresh_for: Duration::from_secs(300),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn lists_only_when_more_resolves_wait_than_the_listing_has_pages() {
        let d = directory(true);
        d.saw_total(500); // five pages
        let five: Vec<Demand> = (0..5).map(|_| d.expect_resolve()).collect();
        assert!(
            matches!(d.plan("a"), Plan::Filter),
            "5 resolves cost no more than 5 pages"
        );
        let sixth = d.expect_resolve();
        let Plan::List(listing) = d.plan("a") else {
            panic!("6 resolves are worth a 5-page listing");
        };
        assert!(
            matches!(d.plan("b"), Plan::Wait(_)),
            "one listing at a time"
        );
        listing.done(mirror(&[user("a", "1", None)]));
        assert!(matches!(d.plan("a"), Plan::Answer(Lookup::Found(_))));
        assert!(
            matches!(d.plan("new"), Plan::Filter),
            "a name it lacks goes to the filter"
        );
        drop((five, sixth));
        assert_eq!(d.demand(), 0);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(d.mirrored(), Some(1));
        assert!(
            matches!(d.plan("a"), Plan::Filter),
            "a stale mirror answers nothing"
        );
        assert_eq!(d.mirrored(), None, "…and its memory is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_the_cap_or_a_failed_listing_means_filters() {
        let d = directory(true);
        d.saw_total(5_000);
        let _many: Vec<Demand> = (0..100).map(|_| d.expect_resolve()).collect();
        assert!(
            matches!(d.plan("a"), Plan::Filter),
            "over directory_max_users"
        );
        d.saw_total(500);
        let Plan::List(listing) = d.plan("a") else {
            panic!("lists");
        };
        listing.failed();
        assert!(
            matches!(d.plan("a"), Plan::Filter),
            "no second try right away"
        );
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(matches!(d.plan("a"), Plan::List(_)));
        assert!(
            matches!(directory(false).plan("a"), Plan::Filter),
            "switched off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_listing_wakes_its_waiters() {
        let d = directory(true);
        let _two = (d.expect_resolve(), d.expect_resolve());
        let Plan::List(listing) = d.plan("a") else {
            panic!("an unknown size with two resolves waiting lists");
        };
        let Plan::Wait(mut rx) = d.plan("b") else {
            panic!("waits");
        };
        drop(listing);
        rx.changed().await.expect("woken");
        assert!(
            matches!(d.plan("b"), Plan::List(_)),
            "the next resolve may list"
        );
    }
}
