//! Where the CPU went during a measured phase: this process (server and clients alike when
//! they run in-process), the Redis server, and the whole machine (other work included).

use std::time::Instant;

/// CPU counters at one moment.
pub struct Sample {
    at: Instant,
    /// This process's user + system time, in clock ticks.
    process_ticks: Option<u64>,
    /// The machine's busy and total time, all cores, in clock ticks.
    machine_ticks: Option<(u64, u64)>,
    /// Redis's user + system seconds (`INFO cpu`).
    redis_seconds: Option<f64>,
}

/// `getconf CLK_TCK`, the unit of `/proc`'s CPU times (100 on Linux in practice).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name: state is the 3rd field, utime the 14th, stime the 15th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

async fn redis_seconds(redis_url: &str) -> Option<f64> {
    let mut connection = redis::Client::open(redis_url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut connection)
        .await
        .ok()?;
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

pub async fn sample(redis_url: &str) -> Sample {
    Sample {
        at: Instant::now(),
        process_ticks: process_ticks(),
        machine_ticks: machine_ticks(),
        redis_seconds: redis_seconds(redis_url).await,
    }
}

impl Sample {
    /// One line: the CPU each used since `self`, in % of one core.
    pub async fn report(&self, redis_url: &str, what: &str) -> String {
        let now = sample(redis_url).await;
        let seconds = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let hz = ticks_per_second();
        let percent = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{:.0} %", v * 100.0));
        let process = self
            .process_ticks
            .zip(now.process_ticks)
            .map(|(a, b)| (b - a) as f64 / hz / seconds);
        let redis = self
            .redis_seconds
            .zip(now.redis_seconds)
            .map(|(a, b)| (b - a) / seconds);
        let machine = self.machine_ticks.zip(now.machine_ticks).map(|(a, b)| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            (b.0 - a.0) as f64 / ((b.1 - a.1) as f64).max(1.0) * cores
        });
        format!(
            "CPU during {what} ({seconds:.1} s), in % of one core: keel-bench process {}, \
             Redis {}, whole machine {} of {} (everyone's work)",
            percent(process),
            percent(redis),
            percent(machine),
            std::thread::available_parallelism().map_or(1, |n| n.get()) * 100
        )
    }
}
