//! `keel-listen`: an example client of `GET /ws/notifications` (the end of the pipeline:
//! … -> relay -> Redis -> hub -> **client**). It sends the token in the `Authorization`
//! header, resumes with `Last-Event-ID`, and prints each frame as one line of JSON.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Exit status when `--timeout-secs` passes before `--count` frames arrived.
const TIMED_OUT: u8 = 3;

/// Prints your Keel notifications as they arrive: opens `GET /ws/notifications` with
/// `Authorization: Bearer <token>` and writes each text frame (one notification, or
/// `{"type":"recovery.incomplete"}`) to stdout as one line of JSON. Status lines go to
/// stderr.
///
/// Exit status: 0 after `--count` frames; 1 when the server refuses the socket (its
/// HTTP status and problem detail are printed: 401 bad token, 403 Origin, 422 bad
/// `--last-event-id`), closes it (its close code: 1001 shutting down, 1013 too slow,
/// 4001 token expired, 1011 history unavailable) or cannot be reached; 3 when
/// `--timeout-secs` passes first.
#[derive(Parser)]
#[command(name = "keel-listen", version)]
struct Cli {
    /// The notification socket's URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws/notifications")]
    url: String,
    /// Access token (JWT): whose notifications to receive. Prefer `KEEL_TOKEN`, since
    /// command-line arguments show in `ps`.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: String,
    /// Resume after this offset (a frame's `offset`): the notifications after it that
    /// are still in the history come first, then live ones.
    #[arg(long)]
    last_event_id: Option<String>,
    /// Exit 0 after this many frames [default: listen until the socket closes].
    #[arg(long)]
    count: Option<u64>,
    /// Give up (exit 3) when the frames have not all arrived within this many seconds.
    #[arg(long)]
    timeout_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.timeout_secs {
        Some(secs) => match tokio::time::timeout(Duration::from_secs(secs), listen(&cli)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                eprintln!("keel-listen: timed out after {secs} s");
                return ExitCode::from(TIMED_OUT);
            }
        },
        None => listen(&cli).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("keel-listen: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Connects and prints frames until `--count` of them arrived; `Err` says why not.
async fn listen(cli: &Cli) -> Result<(), String> {
    let mut request = cli
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid --url {}: {e}", cli.url))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", cli.token))
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    request.headers_mut().insert("authorization", bearer);
    if let Some(offset) = &cli.last_event_id {
        let offset = HeaderValue::from_str(offset)
            .map_err(|_| "--last-event-id is not a valid header value".to_owned())?;
        request.headers_mut().insert("last-event-id", offset);
    }
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(Error::Http(response)) => return Err(refusal(&response)),
        Err(error) => return Err(format!("cannot connect to {}: {error}", cli.url)),
    };
    eprintln!("keel-listen: connected to {}", cli.url);
    let mut received = 0;
    while cli.count.is_none_or(|count| received < count) {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("the server sent a frame that is not JSON: {e}"))?;
                // Frames are compact JSON already; re-encode only one that is not one line.
                if text.contains('\n') {
                    println!("{frame}");
                } else {
                    println!("{text}");
                }
                received += 1;
            }
            Some(Ok(Message::Close(Some(close)))) => {
                let code = u16::from(close.code);
                return Err(format!(
                    "the server closed the socket: {code} {}",
                    close.reason
                ));
            }
            Some(Ok(Message::Close(None))) | None => {
                return Err("the server closed the socket".to_owned());
            }
            // Pings are answered by the library; the server sends nothing else.
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(format!("the socket failed: {error}")),
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// "refused: <status>: <problem detail>", from the server's RFC 9457 answer.
fn refusal(response: &Response<Option<Vec<u8>>>) -> String {
    let body = response.body().as_deref().unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    format!("refused: {}: {detail}", response.status())
}
