//! Keel's principals on this machine, as `scripts/services.sh` wrote them: each process's
//! Redis and NATS URL (its own ACL user and NATS user), the admin's (the kit's inspection
//! and fault injection), and the rule files the test-owned servers start with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use reqwest::Url;

/// Who connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    CommandApi,
    Projectors,
    Relay,
    /// Operators and the test kit: every right.
    Admin,
}

impl Principal {
    fn suffix(self) -> &'static str {
        match self {
            Principal::CommandApi => "COMMAND_API",
            Principal::Projectors => "PROJECTORS",
            Principal::Relay => "RELAY",
            Principal::Admin => "ADMIN",
        }
    }
}

/// The principals file's variables.
pub struct Principals {
    vars: HashMap<String, String>,
}

/// The principals file: `KEEL_PRINCIPALS_FILE`, else `principals.env` in Keel's state dir.
pub fn file() -> PathBuf {
    if let Ok(path) = std::env::var("KEEL_PRINCIPALS_FILE") {
        return PathBuf::from(path);
    }
    let state = std::env::var("XDG_STATE_HOME").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/state"),
        PathBuf::from,
    );
    state.join("keel/principals.env")
}

/// This machine's principals, read once.
pub fn principals() -> &'static Principals {
    static PRINCIPALS: OnceLock<Principals> = OnceLock::new();
    PRINCIPALS.get_or_init(|| {
        let path = file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read Keel's principals at {} ({e}): run scripts/services.sh",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Principals { vars }
    })
}

impl Principals {
    fn var(&self, name: &str) -> &str {
        self.vars.get(name).unwrap_or_else(|| {
            panic!(
                "{name} is missing from {}: run scripts/services.sh",
                file().display()
            )
        })
    }

    /// `principal`'s URL of the shared Redis.
    pub fn redis_url(&self, principal: Principal) -> String {
        self.var(&format!("KEEL_REDIS_URL_{}", principal.suffix()))
            .to_owned()
    }

    /// `principal`'s URL of Keel's NATS.
    pub fn nats_url(&self, principal: Principal) -> String {
        self.var(&format!("KEEL_NATS_URL_{}", principal.suffix()))
            .to_owned()
    }

    /// The Redis ACL users, one `user NAME rules…` line each.
    pub fn redis_acl_file(&self) -> PathBuf {
        PathBuf::from(self.var("KEEL_REDIS_ACL_FILE"))
    }

    /// The NATS configuration with every user and its permissions.
    pub fn nats_conf(&self) -> PathBuf {
        PathBuf::from(self.var("KEEL_NATS_CONF"))
    }
}

/// `server` (any URL of a Redis server) with `principal`'s user and password.
pub fn redis_as(server: &str, principal: Principal) -> String {
    with_user_of(server, &principals().redis_url(principal))
}

/// `server` (any URL of a NATS server, or several comma-separated, as `NATS_URL` takes
/// them) with `principal`'s user and password.
pub fn nats_as(server: &str, principal: Principal) -> String {
    let principal_url = principals().nats_url(principal);
    server
        .split(',')
        .map(|one| with_user_of(one.trim(), &principal_url))
        .collect::<Vec<_>>()
        .join(",")
}

fn with_user_of(server: &str, principal_url: &str) -> String {
    let from = Url::parse(principal_url).expect("a principal's URL parses");
    let mut url = Url::parse(server).unwrap_or_else(|e| panic!("not a server URL ({e})"));
    url.set_username(from.username())
        .and_then(|()| url.set_password(from.password()))
        .expect("the server URL takes a user");
    url.to_string()
}

/// Connects to `url` as the user in it, once (no retries: a server that is away fails).
pub async fn nats_connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = events::nats::credentials(url) {
        options = options.user_and_password(user, password);
    }
    options.connect(events::nats::servers(url)).await
}
