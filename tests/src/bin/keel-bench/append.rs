//! `append`: 32 HTTP clients register users and then rename them, each request with a
//! real JWT, against the real command API on its own database; beside it, pgbench's bare
//! one-row INSERT transaction at 32 clients on the same server.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_tests::test_app::{mint, test_config};
use keel_tests::{JwksServer, TestApp, fresh_database};
use reqwest::Method;

use crate::percentile;
use crate::report::Figure;

async fn drive_commands(
    app: &TestApp,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    // Register every client's user first; the measured phase renames them.
    let mut users = Vec::with_capacity(clients);
    for i in 0..clients {
        let id = uuid::Uuid::new_v4();
        let token = mint(dev_issuer::TokenRequest {
            sub: id.to_string(),
            roles: vec!["user".into()],
            ..Default::default()
        });
        let response = app
            .send(
                Method::POST,
                "/api/users",
                &token,
                serde_json::json!({"email": format!("bench{i}@bench.test"), "name": "Bench"}),
            )
            .await;
        anyhow::ensure!(
            response.status() == 201,
            "registering bench user: {}",
            response.status()
        );
        users.push((id, token));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks = users.into_iter().map(|(id, token)| {
        let client = client.clone();
        let url = app.url(&format!("/api/users/{id}"));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let response = client
                    .patch(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"name": format!("Bench {n}")}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => latencies.push(sent.elapsed()),
                    Ok(r) => return Err(anyhow::anyhow!("command failed with {}", r.status())),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(latencies)
        })
    });
    let mut latencies = Vec::new();
    for task in futures::future::join_all(tasks).await {
        latencies.extend(task??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((latencies.len() as f64 / elapsed, latencies))
}

fn pgbench_insert_tps(database_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let setup = Command::new("psql")
        .args([database_url, "-qc", "CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, payload jsonb NOT NULL)"])
        .status()?;
    anyhow::ensure!(setup.success(), "creating the pgbench table failed");
    let script = std::env::temp_dir().join(format!("keel-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO bench_insert (payload) VALUES ('{\"name\": \"Bench\"}');\n",
    )?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(database_url)
        .output()
        .context("running pgbench (apt install postgresql-client)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {text}"))
}

pub async fn run(clients: usize, seconds: u64) -> anyhow::Result<Vec<Figure>> {
    let jwks = JwksServer::start().await?;
    let mut config = test_config(fresh_database().await?, &jwks);
    config.db_pool_size = 8;
    let app = TestApp::spawn_with(config, jwks).await?;
    let (rate, latencies) = drive_commands(&app, clients, seconds).await?;
    let tps = pgbench_insert_tps(&app.database_url, clients, seconds)?;
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!("scenario  clients  keel commands/s  p50 ms  p99 ms  pgbench 1-row INSERT tps  ratio");
    println!(
        "append    {clients:>7}  {rate:>15.0}  {:>6.2}  {:>6.2}  {tps:>24.0}  {:>5.2}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        rate / tps
    );
    app.stop().await;
    Ok(vec![
        Figure::ratio(
            "append",
            rate,
            "commands/s",
            "pgbench 1-row INSERT tps, same clients",
            tps,
            Some(1.0),
        ),
        Figure::absolute("append p99", p99.as_secs_f64() * 1e3, "ms", Some("< 25 ms")),
    ])
}
