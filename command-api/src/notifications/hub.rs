//! The hub: the sockets of this instance by user, and the notifications its
//! subscription receives fanned out to them.
//!
//! The hub subscribes only its users' channels ([`subscription`]): a socket registers,
//! then waits until Redis confirmed its user's channel. Every socket registers a bounded
//! queue. Fan-out never waits on a socket: when a queue is full the socket is evicted
//! (closed with 1013), so a slow client can only lose its own connection. After every
//! (re)subscription the hub bumps a generation; each socket then reads its history from
//! where it stands, which closes any gap the subscription had while it was down.
//!
//! The same subscription carries `policy.invalidate.*` (handed to [`Policy`]), and the
//! hub closes (4003) the sockets whose token or user a policy change revoked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::recovery::History;
use super::slots::Slots;
use super::subscription::{self, Subscriptions};
use super::ticket::Tickets;
use crate::auth::Principal;
use crate::policy::{Change, Policy};
use domain::ids::UserId;
use events::policy as policy_channels;
use notify::Offset;

/// Frames a socket may have waiting before it counts as too slow.
pub const QUEUE: usize = 256;

/// One live notification, as published: its offset and the frame to send.
#[derive(Debug, Clone)]
pub struct Live {
    pub offset: Offset,
    pub frame: Arc<str>,
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Live>,
    evicted: CancellationToken,
    /// Cancelled when a policy change revokes the socket's token or user.
    revoked: CancellationToken,
    principal: Principal,
}

/// Shared by every socket of this instance.
pub struct Hub {
    client: redis::Client,
    pub history: History,
    pub tickets: Tickets,
    /// Authorization, kept current by the `policy.invalidate.*` messages received here.
    pub policy: Arc<Policy>,
    subscribers: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    /// The channels the sockets need, served by the subscription task.
    pub(super) subscriptions: Subscriptions,
    next_id: AtomicU64,
    generation: watch::Sender<u64>,
    /// Cancelled at shutdown: every socket closes with 1001.
    pub closing: CancellationToken,
    /// The sessions, so that shutdown can wait for their close frames.
    pub sessions: TaskTracker,
    /// Origins allowed to open a socket from a browser; empty allows any.
    pub allowed_origins: Vec<String>,
    /// The socket limits, per user and in all.
    pub slots: Arc<Slots>,
    evictions: AtomicU64,
    /// Notifications received from Redis, since start.
    received: AtomicU64,
}

/// A socket's place in the hub; unregisters on drop.
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    id: u64,
    pub queue: mpsc::Receiver<Live>,
    pub evicted: CancellationToken,
    pub revoked: CancellationToken,
    pub generation: watch::Receiver<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.user, self.id);
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    offset: &'a str,
}

impl Hub {
    pub fn new(
        client: redis::Client,
        stream: &str,
        allowed_origins: Vec<String>,
        policy: Arc<Policy>,
        slots: Slots,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            history: History::new(&client, stream)?,
            tickets: Tickets::new(&client, stream)?,
            policy,
            client,
            subscribers: Mutex::new(HashMap::new()),
            subscriptions: Subscriptions::default(),
            next_id: AtomicU64::new(0),
            generation: watch::Sender::new(0),
            closing: CancellationToken::new(),
            sessions: TaskTracker::new(),
            allowed_origins,
            slots: Arc::new(slots),
            evictions: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    fn subscribers(&self) -> MutexGuard<'_, HashMap<UserId, Vec<Subscriber>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a socket of `principal`: once this returns, its user's channel is
    /// subscribed and its notifications queue up for it.
    pub async fn register(self: &Arc<Self>, principal: &Principal) -> Registration {
        let user = principal.user_id;
        let (queue, receiver) = mpsc::channel(QUEUE);
        let evicted = CancellationToken::new();
        let revoked = CancellationToken::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers()
            .entry(user)
            .or_default()
            .push(Subscriber {
                id,
                queue,
                evicted: evicted.clone(),
                revoked: revoked.clone(),
                principal: principal.clone(),
            });
        let registration = Registration {
            hub: self.clone(),
            user,
            id,
            queue: receiver,
            evicted,
            revoked,
            generation: self.generation.subscribe(),
        };
        // Not past shutdown; were this future dropped meanwhile, the registration would
        // unregister.
        tokio::select! {
            () = self.subscriptions.subscribe(user) => {}
            () = self.closing.cancelled() => {}
        }
        registration
    }

    /// The sockets `pick` selects (of `user` only, when given): how to close each, and
    /// who opened it.
    fn sockets_where(
        &self,
        user: Option<UserId>,
        pick: impl Fn(&Subscriber) -> bool,
    ) -> Vec<(CancellationToken, Principal)> {
        let subscribers = self.subscribers();
        let sockets: Box<dyn Iterator<Item = &Subscriber>> = match user {
            Some(user) => Box::new(subscribers.get(&user).into_iter().flatten()),
            None => Box::new(subscribers.values().flatten()),
        };
        sockets
            .filter(|s| pick(s))
            .map(|s| (s.revoked.clone(), s.principal.clone()))
            .collect()
    }

    /// Closes (4003) the sockets each policy change revokes, until `stop`. A change of a
    /// user rechecks that user's sockets; a revoked `jti` closes the sockets of that
    /// token; changes missed (this task fell behind) recheck every socket.
    pub async fn enforce(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<Change>,
        stop: CancellationToken,
    ) {
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            let sockets = match change {
                Ok(Change::User(user)) => self.sockets_where(Some(user), |_| true),
                Ok(Change::Token(jti)) => {
                    self.sockets_where(None, |s| s.principal.jti.as_deref() == Some(&*jti))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.sockets_where(None, |_| true),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for (revoked, principal) in sockets {
                match self.policy.revokes(&principal).await {
                    Ok(true) => revoked.cancel(),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot recheck a socket's access; it stays open");
                    }
                }
            }
        }
    }

    fn remove(&self, user: UserId, id: u64) {
        let mut subscribers = self.subscribers();
        if let Some(sockets) = subscribers.get_mut(&user) {
            sockets.retain(|s| s.id != id);
            if sockets.is_empty() {
                subscribers.remove(&user);
                self.subscriptions.release(user);
            }
        }
    }

    /// The users with a socket here.
    pub(super) fn users(&self) -> Vec<UserId> {
        self.subscribers().keys().copied().collect()
    }

    /// Whether `user` has a socket here.
    pub(super) fn has_sockets(&self, user: UserId) -> bool {
        self.subscribers().contains_key(&user)
    }

    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Sockets open on this instance.
    pub fn sockets(&self) -> usize {
        self.subscribers().values().map(Vec::len).sum()
    }

    /// Sockets closed for being too slow, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Counts a socket closed for being too slow (1013).
    pub fn record_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Notifications received from Redis, since start.
    pub fn notifications_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Takes a message of the subscription: an invalidation for the policy, a
    /// notification for the sockets of its user.
    pub(super) fn receive(&self, channel: &str, payload: &[u8]) {
        if let Some(invalidation) = policy_channels::invalidation(channel) {
            self.policy.invalidate(invalidation);
        } else if let Some(user) = notify::channel_user(channel) {
            self.received.fetch_add(1, Ordering::Relaxed);
            self.fan_out(user, payload);
        }
    }

    /// The subscription is (again) up: sockets read what they may have missed while it
    /// was not; the policy reads the invalidations it may have missed from the log.
    pub(super) fn resubscribed(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.policy.wake();
    }

    /// Hands a published message to the sockets of its user, never waiting.
    fn fan_out(&self, user: UserId, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            tracing::warn!("notification is not UTF-8; dropped");
            return;
        };
        let Some(offset) = serde_json::from_str::<Head>(text)
            .ok()
            .and_then(|head| head.offset.parse::<Offset>().ok())
        else {
            tracing::warn!("notification without a valid offset; dropped");
            return;
        };
        let live = Live {
            offset,
            frame: Arc::from(text),
        };
        let mut subscribers = self.subscribers();
        let Some(sockets) = subscribers.get_mut(&user) else {
            return;
        };
        sockets.retain(|socket| match socket.queue.try_send(live.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                socket.evicted.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if sockets.is_empty() {
            subscribers.remove(&user);
            self.subscriptions.release(user);
        }
    }

    /// Keeps the subscription up until `stop` (see [`subscription::run`]).
    pub async fn subscribe(self: Arc<Self>, stop: CancellationToken) {
        subscription::run(self, stop).await;
    }
}
