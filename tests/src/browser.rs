//! A real browser for tests of the page: headless Chromium of its own (a fresh profile in
//! a temp dir), driven over the Chrome DevTools Protocol on one WebSocket. Just enough to
//! open a URL and evaluate JavaScript in it, so a test sees what a user would see
//! without pulling in a browser-automation framework.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to start and list its page (a cold start on a loaded CI
/// machine takes seconds).
const STARTUP: Duration = Duration::from_secs(30);
/// How long one `Runtime.evaluate` may take to answer.
const ANSWER: Duration = Duration::from_secs(10);

/// Headless Chromium showing one page, driven over its DevTools socket.
pub struct Browser {
    // Behind a lock so `evaluate` takes `&self` and can be polled from `eventually`.
    devtools: Mutex<DevTools>,
    // Dropped last: the socket closes before the browser goes.
    _process: Chromium,
}

struct DevTools {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium on `url` and connects to that page's DevTools socket.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let mut process = Chromium::start(url)?;
        let socket_url = process.page_socket_url().await?;
        let (socket, _) = tokio_tungstenite::connect_async(socket_url.as_str())
            .await
            .context("connecting to the page's DevTools socket")?;
        Ok(Self {
            devtools: Mutex::new(DevTools { socket, next_id: 0 }),
            _process: process,
        })
    }

    /// Evaluates a JavaScript expression in the page and returns its value as JSON
    /// (`Null` for `undefined`); an exception thrown by it is an error.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let mut devtools = self.devtools.lock().await;
        devtools.next_id += 1;
        let id = devtools.next_id;
        let command = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        devtools
            .socket
            .send(Message::text(command.to_string()))
            .await?;
        let answer = tokio::time::timeout(ANSWER, devtools.answer_to(id))
            .await
            .map_err(|_| anyhow!("no answer to Runtime.evaluate within {ANSWER:?}"))??;
        if let Some(error) = answer.get("error") {
            bail!("Runtime.evaluate failed: {error}");
        }
        let result = &answer["result"];
        if let Some(exception) = result.get("exceptionDetails") {
            bail!(
                "`{expression}` threw: {}",
                exception["exception"]["description"]
            );
        }
        Ok(result["result"]["value"].clone())
    }
}

impl DevTools {
    /// Reads the socket up to the answer to command `id` (events, which this driver never
    /// subscribes to, are skipped).
    async fn answer_to(&mut self, id: u64) -> anyhow::Result<Value> {
        while let Some(message) = self.socket.next().await {
            if let Message::Text(text) = message? {
                let message: Value = serde_json::from_str(&text)?;
                if message["id"] == id {
                    return Ok(message);
                }
            }
        }
        bail!("the DevTools socket closed (did chromium die?)")
    }
}

/// The Chromium process and its profile dir; killed and removed on drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    fn start(url: &str) -> anyhow::Result<Self> {
        let profile =
            std::env::temp_dir().join(format!("keel-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile)?;
        // Chromium's chatter goes to a file in the profile, shown only if it fails to
        // start: never to the test output or the scanned server logs.
        let log = std::fs::File::create(profile.join("chromium.log"))?;
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                // Containers (CI) have no user namespaces for the sandbox and a small
                // /dev/shm; neither matters for a test page.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                // Port 0: Chromium picks a free one and writes it to DevToolsActivePort.
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            // Its scratch files (singleton socket) go in the profile too, so they go with it.
            .env("TMPDIR", &profile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match child {
            Ok(child) => Ok(Self { child, profile }),
            Err(error) => {
                let _ = std::fs::remove_dir_all(&profile);
                Err(anyhow!(
                    "cannot start `chromium` (Debian package chromium; scripts/test installs it): {error}"
                ))
            }
        }
    }

    /// Waits (bounded) for the DevTools port and the page target, and returns the page's
    /// `webSocketDebuggerUrl`.
    async fn page_socket_url(&mut self) -> anyhow::Result<String> {
        // Loopback only: a proxy from the environment must not get in the way.
        let http = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < STARTUP {
            if let Some(status) = self.exited() {
                bail!(
                    "chromium exited ({status}) at startup; its log:\n{}",
                    self.log()
                );
            }
            match self.try_page_socket_url(&http).await {
                Ok(Some(url)) => return Ok(url),
                Ok(None) => last = "no page target listed yet".to_owned(),
                Err(error) => last = format!("{error:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "chromium's page not reachable within {STARTUP:?} (last: {last}); its log:\n{}",
            self.log()
        )
    }

    async fn try_page_socket_url(&self, http: &reqwest::Client) -> anyhow::Result<Option<String>> {
        let active = std::fs::read_to_string(self.profile.join("DevToolsActivePort"))
            .context("DevToolsActivePort not written yet")?;
        let port: u16 = active
            .lines()
            .next()
            .unwrap_or_default()
            .parse()
            .context("DevToolsActivePort not complete yet")?;
        let targets: Vec<Value> = http
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(targets
            .iter()
            .find(|target| target["type"] == "page")
            .and_then(|target| target["webSocketDebuggerUrl"].as_str())
            .map(str::to_owned))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines Chromium wrote to stderr.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The helper processes notice the browser is gone and exit within moments, but
        // may still write into the profile meanwhile: retry until it is gone (bounded).
        let started = Instant::now();
        while self.profile.exists() && started.elapsed() < Duration::from_secs(5) {
            if std::fs::remove_dir_all(&self.profile).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
