//! The hub's Redis subscription: the channels of the users with a socket here.
//!
//! One connection per instance holds `policy.invalidate.*` and the channel of each user
//! with a socket on this instance, kept by one task through which every subscribe and
//! unsubscribe goes (requests wait in a channel of [`REQUESTS`]). A socket asks the task
//! for its user's channel and counts as live only once Redis has confirmed the
//! `SUBSCRIBE`; when a user's last socket closes, the task unsubscribes the channel
//! unless a socket of that user registered meanwhile. After a reconnect the task
//! resubscribes every current user's channel ([`BATCH`] per round trip), then bumps the
//! hub's generation so that each socket reads its history from where it stands.
//! [`Channels`] is the only code that knows how a channel is (un)subscribed.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::try_join_all;
use redis::RedisError;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use domain::ids::UserId;

use events::policy as policy_channels;

/// Subscription requests (one per socket being registered) that may wait for the task.
pub const REQUESTS: usize = 1024;
/// User channels (un)subscribed per round trip to Redis.
pub const BATCH: usize = 500;
/// Longest one batch (or one ping) may wait for Redis before the connection counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the connection is pinged, and how long the answer may take.
const CHECK_EVERY: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("connecting the subscription")]
    Connect(#[source] RedisError),
    #[error("subscribing `policy.invalidate.*`")]
    Policy(#[source] RedisError),
    #[error("subscribing user channels")]
    Subscribe(#[source] RedisError),
    #[error("unsubscribing user channels")]
    Unsubscribe(#[source] RedisError),
    #[error("pinging the subscription")]
    Ping(#[source] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the subscription's connection closed")]
    Closed,
}

/// The subscription connection, as the hub uses it: user channels subscribed and
/// unsubscribed, liveness proved. Each user channel goes in its own `SUBSCRIBE`, a batch
/// of them pipelined (none waits for another's reply): Redis confirms a `SUBSCRIBE` of
/// n channels with n replies, while redis-rs pairs one reply with each request, so the
/// n − 1 extra replies would answer the requests that follow (a later user's
/// `SUBSCRIBE` would count as confirmed before Redis ran it). On Redis Cluster the
/// sharded `SSUBSCRIBE` / `SUNSUBSCRIBE` replace them here, one channel per command too
/// (the channels of one command must share a slot).
pub struct Channels {
    sink: PubSubSink,
}

impl Channels {
    /// Connects and subscribes `policy.invalidate.*`; the stream carries the messages of
    /// every channel subscribed from now on.
    pub async fn open(client: &redis::Client) -> Result<(Self, PubSubStream), SubscriptionError> {
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(SubscriptionError::Connect)?;
        let (mut sink, messages) = pubsub.split();
        answered(sink.psubscribe(policy_channels::CHANNEL_PATTERN))
            .await?
            .map_err(SubscriptionError::Policy)?;
        Ok((Self { sink }, messages))
    }

    /// Subscribes the channels of `users`; returns once Redis confirmed every one.
    pub async fn subscribe(&self, users: &[UserId]) -> Result<(), SubscriptionError> {
        for batch in users.chunks(BATCH) {
            let confirmations = batch.iter().map(|&user| {
                let mut sink = self.sink.clone();
                async move { sink.subscribe(notify::channel(user)).await }
            });
            answered(try_join_all(confirmations))
                .await?
                .map_err(SubscriptionError::Subscribe)?;
        }
        Ok(())
    }

    /// Unsubscribes the channels of `users`; returns once Redis confirmed every one.
    pub async fn unsubscribe(&self, users: &[UserId]) -> Result<(), SubscriptionError> {
        for batch in users.chunks(BATCH) {
            let confirmations = batch.iter().map(|&user| {
                let mut sink = self.sink.clone();
                async move { sink.unsubscribe(notify::channel(user)).await }
            });
            answered(try_join_all(confirmations))
                .await?
                .map_err(SubscriptionError::Unsubscribe)?;
        }
        Ok(())
    }

    /// Proves the connection alive: a half-open one (a partition) delivers nothing and
    /// reports nothing, only an unanswered ping reveals it.
    pub async fn ping(&mut self) -> Result<(), SubscriptionError> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(SubscriptionError::Ping(error)),
            Err(_) => Err(SubscriptionError::Timeout(CHECK_TIMEOUT)),
        }
    }
}

/// `request`'s outcome, unless Redis takes longer than [`ANSWER_TIMEOUT`].
async fn answered<T>(request: impl Future<Output = T>) -> Result<T, SubscriptionError> {
    tokio::time::timeout(ANSWER_TIMEOUT, request)
        .await
        .map_err(|_| SubscriptionError::Timeout(ANSWER_TIMEOUT))
}

/// A socket's request for its user's channel; dropping it answers too (see
/// [`Subscriptions::subscribe`]).
struct Request {
    user: UserId,
    confirmed: oneshot::Sender<()>,
}

/// What the sockets ask of the subscription task: the channels of users who registered
/// a socket, and of users whose last socket closed.
pub struct Subscriptions {
    requests: mpsc::Sender<Request>,
    /// Taken by the one task that serves them (see [`run`]).
    served: tokio::sync::Mutex<mpsc::Receiver<Request>>,
    released: Mutex<HashSet<UserId>>,
    released_changed: Notify,
}

impl Default for Subscriptions {
    fn default() -> Self {
        let (requests, served) = mpsc::channel(REQUESTS);
        Self {
            requests,
            served: tokio::sync::Mutex::new(served),
            released: Mutex::new(HashSet::new()),
            released_changed: Notify::new(),
        }
    }
}

impl Subscriptions {
    /// Waits until `user`'s channel is subscribed, or until the subscription is down
    /// (its resubscription then covers `user`, whose socket is already registered, and
    /// bumps the generation, which makes the socket read its history again).
    pub async fn subscribe(&self, user: UserId) {
        let (confirmed, confirmation) = oneshot::channel();
        if self
            .requests
            .send(Request { user, confirmed })
            .await
            .is_ok()
        {
            let _ = confirmation.await;
        }
    }

    /// `user` has no socket left here: its channel may go.
    pub fn release(&self, user: UserId) {
        self.released
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(user);
        self.released_changed.notify_one();
    }

    fn take_released(&self) -> HashSet<UserId> {
        std::mem::take(
            &mut *self
                .released
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// Keeps the subscription up until `stop`, resubscribing (within a second of Redis
/// being back) whenever it drops, and serves the sockets' requests meanwhile.
pub async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    let mut requests = hub.subscriptions.served.lock().await;
    keep_up(&hub, &mut requests, &stop).await;
    // Nobody answers any more: sockets registering from now on go on without.
    requests.close();
    while requests.try_recv().is_ok() {}
}

async fn keep_up(hub: &Hub, requests: &mut mpsc::Receiver<Request>, stop: &CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = answering(requests, Channels::open(hub.client())) => opened,
        };
        let lost = match opened {
            Ok((channels, messages)) => {
                let mut connection = Connection {
                    hub,
                    channels,
                    subscribed: HashSet::new(),
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    lost = connection.serve(messages, requests, &mut backoff) => lost,
                }
            }
            Err(error) => error,
        };
        tracing::warn!(error = %lost, "notification subscription down; resubscribing");
        tokio::select! {
            () = stop.cancelled() => return,
            () = answering(requests, tokio::time::sleep(backoff)) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs `work` while no subscription is up, answering every request at once: the
/// resubscription that follows reads the users from the hub, where each request's
/// socket already is.
async fn answering<T>(requests: &mut mpsc::Receiver<Request>, work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            Some(request) = requests.recv() => drop(request),
        }
    }
}

/// One connection's life.
struct Connection<'a> {
    hub: &'a Hub,
    channels: Channels,
    /// The user channels Redis confirmed on this connection.
    subscribed: HashSet<UserId>,
}

impl Connection<'_> {
    /// Resubscribes the channels of the hub's users and bumps its generation, then
    /// serves requests and delivers messages until the connection fails. Requests not
    /// answered by then are dropped, which answers them: their users are in the hub, so
    /// the next resubscription covers them.
    async fn serve(
        &mut self,
        mut messages: PubSubStream,
        requests: &mut mpsc::Receiver<Request>,
        backoff: &mut Duration,
    ) -> SubscriptionError {
        let users = self.hub.users();
        if let Err(error) = self.channels.subscribe(&users).await {
            return error;
        }
        self.subscribed.extend(users);
        tracing::info!(
            channels = self.subscribed.len(),
            "subscribed to the notification channels of this instance's users"
        );
        *backoff = MIN_BACKOFF;
        self.hub.resubscribed();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut pending = Vec::with_capacity(BATCH);
        loop {
            let step = tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        self.hub.receive(message.get_channel_name(), message.get_payload_bytes());
                        Ok(())
                    }
                    None => Err(SubscriptionError::Closed),
                },
                Some(request) = requests.recv() => {
                    pending.push(request);
                    while pending.len() < BATCH {
                        match requests.try_recv() {
                            Ok(request) => pending.push(request),
                            Err(_) => break,
                        }
                    }
                    self.confirm(&mut pending).await
                }
                () = self.hub.subscriptions.released_changed.notified() => self.release().await,
                _ = check.tick() => self.channels.ping().await,
            };
            if let Err(error) = step {
                return error;
            }
        }
    }

    /// Subscribes the requested channels not subscribed yet, then answers the requests.
    async fn confirm(&mut self, pending: &mut Vec<Request>) -> Result<(), SubscriptionError> {
        let mut new = Vec::new();
        for request in pending.iter() {
            if self.subscribed.insert(request.user) {
                new.push(request.user);
            }
        }
        // On failure this connection, and with it `subscribed`, is dropped.
        self.channels.subscribe(&new).await?;
        for request in pending.drain(..) {
            let _ = request.confirmed.send(());
        }
        Ok(())
    }

    /// Unsubscribes the channels of released users still without a socket here. A user
    /// who registered a socket meanwhile keeps its channel; one who registers after
    /// this check has its request served after this unsubscription, and subscribes again.
    async fn release(&mut self) -> Result<(), SubscriptionError> {
        let gone: Vec<UserId> = self
            .hub
            .subscriptions
            .take_released()
            .into_iter()
            .filter(|user| self.subscribed.contains(user) && !self.hub.has_sockets(*user))
            .collect();
        self.channels.unsubscribe(&gone).await?;
        for user in &gone {
            self.subscribed.remove(user);
        }
        Ok(())
    }
}
