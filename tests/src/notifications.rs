//! Notifications under test: the relay in this process, WebSocket clients of
//! `/ws/notifications`, and a notifier that publishes exactly as the relay does (its own
//! script), for tests of the hub alone.

use std::time::Duration;

use chrono::Utc;
use domain::ids::{EventId, Position, UserId};
use domain::notification::{Addressed, Notification};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::TestApp;
use crate::principals::Principal;

/// The relay, running in this process until stopped or dropped.
pub struct RunningRelay {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningRelay {
    pub async fn start(app: &TestApp) -> Self {
        let config = relay::Config {
            connections: crate::projections::worker_settings(app, Principal::Relay),
        };
        let relay = relay::build(&config).await.expect("the relay starts");
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(stop.clone()));
        Self {
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a client authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Header(&'a str),
    /// Browser style: subprotocols `keel.v1` and `bearer.<token>`.
    Subprotocol(&'a str),
    /// The page's way: subprotocols `keel.v1` and `ticket.<ticket>`.
    Ticket(&'a str),
    Nothing,
}

/// How a client connects.
#[derive(Clone, Copy)]
pub struct Connect<'a> {
    pub auth: Auth<'a>,
    /// Resume after this offset, by `Last-Event-ID` (or, with `Auth::Subprotocol`, by the
    /// `last-event-id.<offset>` subprotocol).
    pub resume: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// A query string to append (e.g. a token, which must be refused).
    pub query: Option<&'a str>,
    /// A small socket receive buffer, so a client that stops reading backs up quickly.
    pub small_receive_buffer: bool,
}

impl<'a> Connect<'a> {
    pub fn header(token: &'a str) -> Self {
        Self {
            auth: Auth::Header(token),
            resume: None,
            origin: None,
            query: None,
            small_receive_buffer: false,
        }
    }

    pub fn subprotocol(token: &'a str) -> Self {
        Self {
            auth: Auth::Subprotocol(token),
            ..Self::header(token)
        }
    }

    pub fn ticket(ticket: &'a str) -> Self {
        Self {
            auth: Auth::Ticket(ticket),
            ..Self::header(ticket)
        }
    }

    pub fn resuming(self, offset: &'a str) -> Self {
        Self {
            resume: Some(offset),
            ..self
        }
    }
}

/// An upgrade the server refused: its status, and its problem body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client socket on `/ws/notifications`.
pub struct Socket {
    ws: Stream,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

/// Opens a socket, or returns why the server refused the upgrade.
pub async fn try_connect(base_url: &str, how: Connect<'_>) -> Result<Socket, Refused> {
    let address = base_url.trim_start_matches("http://");
    let url = match how.query {
        Some(query) => format!("ws://{address}/ws/notifications?{query}"),
        None => format!("ws://{address}/ws/notifications"),
    };
    let mut request = url.into_client_request().expect("a websocket request");
    let headers = request.headers_mut();
    let mut protocols = Vec::new();
    match how.auth {
        Auth::Header(token) => {
            headers.insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        Auth::Subprotocol(token) => {
            protocols.push("keel.v1".to_owned());
            protocols.push(format!("bearer.{token}"));
        }
        Auth::Ticket(ticket) => {
            protocols.push("keel.v1".to_owned());
            protocols.push(format!("ticket.{ticket}"));
        }
        Auth::Nothing => {}
    }
    if let Some(offset) = how.resume {
        match how.auth {
            Auth::Subprotocol(_) | Auth::Ticket(_) => {
                protocols.push(format!("last-event-id.{offset}"))
            }
            _ => {
                headers.insert("last-event-id", offset.parse().expect("header"));
            }
        }
    }
    if !protocols.is_empty() {
        headers.insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().expect("header"),
        );
    }
    if let Some(origin) = how.origin {
        headers.insert("origin", origin.parse().expect("header"));
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    if how.small_receive_buffer {
        socket
            .set_recv_buffer_size(4096)
            .expect("a receive buffer size");
    }
    let stream = socket
        .connect(address.parse().expect("a socket address"))
        .await
        .expect("the app accepts connections");
    let config = how.small_receive_buffer.then(|| {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(1 << 20))
    });
    match tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        config,
    )
    .await
    {
        Ok((ws, response)) => Ok(Socket {
            ws,
            protocol: response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }),
        Err(tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default(),
        }),
        Err(other) => panic!("websocket handshake failed: {other}"),
    }
}

/// Opens a socket that must be accepted.
pub async fn connect(app: &TestApp, how: Connect<'_>) -> Socket {
    try_connect(&app.base_url, how)
        .await
        .unwrap_or_else(|refused| panic!("socket refused: {refused:?}"))
}

/// How long a test waits for one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(15);

impl Socket {
    /// The next text frame as JSON; fails the test if none comes within `FRAME_WAIT`.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {FRAME_WAIT:?}"));
            match message {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("a JSON frame");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next `n` text frames.
    pub async fn take(&mut self, n: usize) -> Vec<Value> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(self.next().await);
        }
        frames
    }

    /// Reads until the server closes the socket, within `within`: the close code, or
    /// `None` if the connection ended without a close frame. Text frames are skipped.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("the socket was not closed within {within:?}"));
            match message {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    }

    /// Sends a text frame (clients have nothing to say; the server ignores small ones).
    pub async fn say(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("the frame goes out");
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Publishes notifications exactly as the relay does (its script, its principal), without
/// events.
pub struct Notifier {
    publisher: notify::Publisher,
    redis: redis::aio::ConnectionManager,
    next_position: i64,
}

impl Notifier {
    pub async fn new(app: &TestApp) -> Self {
        let client = redis::Client::open(app.redis_url_of(Principal::Relay)).expect("a redis url");
        Self {
            publisher: notify::Publisher::new(&app.stream),
            redis: redis::aio::ConnectionManager::new(client)
                .await
                .expect("redis answers"),
            next_position: 1,
        }
    }

    /// A notification to `user` carrying `data`, as a fresh event would give.
    pub fn notification(user: Uuid, data: Value) -> Addressed {
        Addressed {
            recipient: UserId(user),
            notification: Notification {
                id: Uuid::new_v4(),
                kind: "test.note",
                time: Utc::now(),
                event_id: EventId::new(),
                data,
            },
        }
    }

    /// Publishes `addressed`; its offset, or `None` if it was published before.
    pub async fn publish(&mut self, addressed: &Addressed) -> Option<String> {
        self.next_position += 1;
        self.publisher
            .publish(&mut self.redis, addressed, Position(self.next_position))
            .await
            .expect("publishing a notification")
            .map(|offset| offset.to_string())
    }

    /// Publishes to `user` once Redis takes it (it may be restarting), trying for at most
    /// `within`; its offset.
    pub async fn send_when_up(&mut self, user: Uuid, data: Value, within: Duration) -> String {
        let addressed = Self::notification(user, data);
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            self.next_position += 1;
            let attempt =
                self.publisher
                    .publish(&mut self.redis, &addressed, Position(self.next_position));
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(Some(offset))) => return offset.to_string(),
                Ok(Ok(None)) => panic!("a fresh notification was taken for a duplicate"),
                Ok(Err(error)) => last = error.to_string(),
                Err(_) => last = "no answer within 2 s".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Redis did not take a notification within {within:?}: {last}")
    }

    /// Publishes a fresh notification to `user` with `data`; its offset.
    pub async fn send(&mut self, user: Uuid, data: Value) -> String {
        self.publish(&Self::notification(user, data))
            .await
            .expect("a fresh notification is published")
    }
}

/// How many connections subscribe `user`'s channel `notify.user.<user>` (Redis's
/// `PUBSUB NUMSUB`, which leaves pattern subscriptions out).
pub async fn channel_subscribers(
    redis: &mut redis::aio::MultiplexedConnection,
    user: Uuid,
) -> redis::RedisResult<i64> {
    let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("notify.user.{user}"))
        .query_async(redis)
        .await?;
    Ok(subscribers)
}

/// The log position of every event of `event_type`, by event id (to check the order in
/// which notifications arrived).
pub async fn positions_of(
    pool: &sqlx::PgPool,
    event_type: &str,
) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (Uuid, i64)>("SELECT event_id, position FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_all(pool)
        .await
        .expect("reading the log's positions")
        .into_iter()
        .map(|(id, position)| (id.to_string(), position))
        .collect()
}

/// Asserts that `frames` are `total` comment notifications, each of its own comment: none
/// lost, none twice.
pub fn assert_each_comment_once(frames: &[Value], total: usize) {
    let comments: std::collections::HashSet<&str> = frames
        .iter()
        .filter_map(|f| f["data"]["comment_id"].as_str())
        .collect();
    assert_eq!(
        (frames.len(), comments.len()),
        (total, total),
        "a notification was lost or duplicated"
    );
}

/// Kills every Pub/Sub connection of the Redis behind `admin` (as a network fault would):
/// how many there were.
pub async fn kill_pubsub_clients(admin: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(admin)
        .await
        .expect("CLIENT KILL answers")
}
