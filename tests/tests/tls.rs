//! TLS to every dependency: Keel's own client code (what the binaries connect with)
//! reaches a Postgres, a Redis and a NATS server of the test's own over TLS, verifying
//! their certificate against a private CA made here, and refuses a server whose
//! certificate another CA signed.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use events::database::OpenError;
use events::tls::PrivateCa;
use keel_tests::server_process::{ServerProcess, free_port};
use keel_tests::{eventually, unique_name};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A Postgres server binary: in `KEEL_TEST_PG_BIN`, else in Debian's newest
/// `/usr/lib/postgresql/<major>/bin`.
fn postgres_bin(name: &str) -> PathBuf {
    let dir = std::env::var("KEEL_TEST_PG_BIN").map_or_else(
        |_| {
            let newest = std::fs::read_dir("/usr/lib/postgresql")
                .unwrap()
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .max()
                .unwrap();
            PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
        },
        PathBuf::from,
    );
    dir.join(name)
}

/// A private CA, a certificate it signed for `localhost` and `127.0.0.1`, and the
/// certificate of another CA, as PEM files in a directory of the test's own.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("keel-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = certificate_authority("Keel test CA");
        let other = certificate_authority("Another CA");
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.other_ca, other.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        pki
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `result` failed because the server's certificate chains to no trusted CA
/// (rustls' `UnknownIssuer`), not for any other reason.
fn unknown_issuer<T, E: std::fmt::Debug>(result: &Result<T, E>) -> bool {
    result
        .as_ref()
        .err()
        .is_some_and(|e| format!("{e:?}").contains("UnknownIssuer"))
}

/// The uid and gid of the `postgres` user: the server refuses to run as root.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// A Postgres server of the test's own, run as `postgres` in `pki`'s directory, with
/// `ssl = on` and the test's certificate. Stopped (fast shutdown) when dropped.
struct TlsPostgres {
    port: u16,
    server: Child,
}

impl TlsPostgres {
    async fn start(pki: &Pki) -> Self {
        let (uid, gid) = postgres_user();
        let data = pki.dir.join("data");
        for path in [&pki.dir, &pki.cert, &pki.key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
        let initdb = Command::new(postgres_bin("initdb"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port().unwrap();
        let setting = |name: &str, value: &Path| format!("{name}={}", value.display());
        let server = Command::new(postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&pki.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
            ])
            .args(["-c", &setting("ssl_cert_file", &pki.cert)])
            .args(["-c", &setting("ssl_key_file", &pki.key)])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { port, server }
    }

    /// Keel's database on this server, verified against `ca`.
    fn url(&self, ca: &Path) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/keel?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let _ = self.server.wait();
    }
}

#[tokio::test]
async fn postgres_is_reached_over_tls_with_the_ca_named_in_the_url() {
    let pki = Pki::new();
    let server = TlsPostgres::start(&pki).await;
    let pool = eventually(
        Duration::from_secs(20),
        "Keel's database opens over TLS",
        || async {
            events::database::open(&server.url(&pki.ca), None, 1)
                .await
                .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
        },
    )
    .await;
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "the session is encrypted");
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(migrated as usize, events::MIGRATOR.iter().count());

    let refused = events::database::connect(&server.url(&pki.other_ca), 1).await;
    assert!(
        matches!(refused, Err(OpenError::Database(_))) && unknown_issuer(&refused),
        "a server another CA vouches for is refused: {refused:?}"
    );
}

#[tokio::test]
async fn redis_is_reached_over_tls_with_the_private_ca() {
    let pki = Pki::new();
    let port = free_port().unwrap();
    let mut server = ServerProcess::new(port);
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&pki.cert)
        .arg("--tls-key-file")
        .arg(&pki.key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca);
    server.start(command).await.unwrap();
    let url = format!("rediss://127.0.0.1:{port}");

    let client = PrivateCa::load(Some(&pki.ca)).unwrap().redis(&url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg("keel:tls")
        .arg("yes")
        .exec_async(&mut connection)
        .await
        .unwrap();
    let read: String = redis::cmd("GET")
        .arg("keel:tls")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(read, "yes");

    let other = PrivateCa::load(Some(&pki.other_ca))
        .unwrap()
        .redis(&url)
        .unwrap();
    let refused = other.get_multiplexed_async_connection().await;
    assert!(
        unknown_issuer(&refused),
        "a server another CA vouches for is refused: {refused:?}"
    );
}

#[tokio::test]
async fn nats_is_reached_over_tls_with_the_private_ca() {
    use futures::StreamExt;

    let pki = Pki::new();
    let port = free_port().unwrap();
    let config = pki.dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .unwrap();
    let mut server = ServerProcess::new(port);
    let mut command = Command::new("nats-server");
    command.arg("-c").arg(&config);
    server.start(command).await.unwrap();
    let url = format!("tls://127.0.0.1:{port}");

    let client = PrivateCa::load(Some(&pki.ca))
        .unwrap()
        .nats()
        .connect(&url)
        .await
        .unwrap();
    let mut subscription = client.subscribe("keel.tls").await.unwrap();
    client.publish("keel.tls", "yes".into()).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], b"yes");

    let other = PrivateCa::load(Some(&pki.other_ca))
        .unwrap()
        .nats()
        .connect(&url)
        .await;
    assert!(
        unknown_issuer(&other),
        "a server another CA vouches for is refused: {other:?}"
    );
}
