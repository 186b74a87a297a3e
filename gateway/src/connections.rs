//! The node's WebSocket connections: numbers, the count against `limits.max_connections`,
//! and the registry of open sessions: their outboxes (a shutdown closes them), who is on
//! them and what their tokens grant (server-side commands and revocation find them by it),
//! and the commands waiting for them.
//!
//! One registry instead of a waiter on the shutdown token in each session: such a waiter is
//! 72 bytes in every connection's task (idle memory, docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::auth::Grant;
use crate::commands::{Command, Revocation};
use crate::hub::{ConnId, Sink};
use crate::identity::Identity;
use crate::protocol::CloseReason;

/// An open session as the registry knows it.
struct Open {
    sink: Arc<dyn Sink>,
    identity: Arc<Identity>,
    grant: Option<Arc<Grant>>,
}

/// Commands waiting for sessions to read them, by connection; empty almost always.
type Mail = HashMap<ConnId, Vec<Command>>;

/// Every connection of the node.
pub struct Connections {
    max: usize,
    count: AtomicUsize,
    next: AtomicU64,
    open: Mutex<HashMap<ConnId, Open>>,
    mail: Mutex<Mail>,
    /// [`Connections::close_all`] was called: sessions registering from now on are closed.
    closing: AtomicBool,
    gauge: metrics::Gauge,
    opened: metrics::Counter,
}

impl Connections {
    /// Room for `max` connections at once. Call after the metrics recorder is installed.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            count: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            open: Mutex::default(),
            mail: Mutex::default(),
            closing: AtomicBool::new(false),
            gauge: metrics::gauge!("switchyard_connections"),
            opened: metrics::counter!("switchyard_connections_total"),
        }
    }

    fn open_sessions(&self) -> MutexGuard<'_, HashMap<ConnId, Open>> {
        // Inserts and removes cannot leave the map half-updated.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mail(&self) -> MutexGuard<'_, Mail> {
        self.mail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a new connection and numbers it, or `None` at the limit. The place is
    /// given back with [`Connections::release`].
    pub fn try_open(&self) -> Option<ConnId> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.increment(1.0);
        self.opened.increment(1);
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers connection `id`'s outbound queue, so that [`Connections::close_all`] closes
    /// it with 1001 (one registering after that is closed at once), with who is on it and
    /// what its token grants, so that commands and revocations find it.
    pub fn register(
        &self,
        id: ConnId,
        sink: Arc<dyn Sink>,
        identity: Arc<Identity>,
        grant: Option<Arc<Grant>>,
    ) {
        let open = Open {
            sink: sink.clone(),
            identity,
            grant,
        };
        self.open_sessions().insert(id, open);
        // After the insert: a close_all that began before it did not see this one.
        if self.closing.load(Ordering::Acquire) {
            sink.close(CloseReason::ShuttingDown);
        }
    }

    /// Records what connection `id`'s token grants after a refresh.
    pub fn set_grant(&self, id: ConnId, grant: Arc<Grant>) {
        if let Some(open) = self.open_sessions().get_mut(&id) {
            open.grant = Some(grant);
        }
    }

    /// Gives connection `id`'s place back.
    pub fn release(&self, id: ConnId) {
        if self.open_sessions().remove(&id).is_some() {
            self.mail().remove(&id);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }

    /// Asks every open session, and every one registering from now on, to close with 1001.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        for open in self.open_sessions().values() {
            open.sink.close(CloseReason::ShuttingDown);
        }
    }

    /// Hands `command` to every session of its user on this node (`node` is this node's
    /// id, for a command aimed at one connection); returns how many got it.
    pub fn command(&self, node: &str, command: &Command) -> usize {
        let targets: Vec<(ConnId, Arc<dyn Sink>)> = self
            .open_sessions()
            .iter()
            .filter(|(id, open)| {
                open.identity.user.as_deref() == Some(command.user()) && command.aims_at(node, **id)
            })
            .map(|(id, open)| (*id, open.sink.clone()))
            .collect();
        if targets.is_empty() {
            return 0;
        }
        let mut mail = self.mail();
        for (id, _) in &targets {
            mail.entry(*id).or_default().push(command.clone());
        }
        drop(mail);
        for (_, sink) in &targets {
            sink.notify();
        }
        targets.len()
    }

    /// The commands waiting for connection `id`, oldest first.
    pub fn take_mail(&self, id: ConnId) -> Vec<Command> {
        self.mail().remove(&id).unwrap_or_default()
    }

    /// Closes every session whose token `revocation` covers; returns how many.
    pub fn revoke(&self, revocation: &Revocation) -> usize {
        let mut closed = 0;
        for open in self.open_sessions().values() {
            let covered = open
                .grant
                .as_deref()
                .is_some_and(|g| revocation.covers(open.identity.user.as_deref(), g));
            if covered {
                open.sink.close(CloseReason::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Open WebSocket connections.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
