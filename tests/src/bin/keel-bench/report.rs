//! The harness's summary: one row per figure, Keel's beside the machine's own limit
//! measured in the same run, printed as a table and written to `target/bench/results.json`.

use std::path::Path;

use serde::Serialize;

/// One figure. `baseline` names what the machine itself does (`None` for a latency, whose
/// goal is absolute and given in `goal`).
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    /// `None` when the scenario failed (its error is printed).
    pub value: Option<f64>,
    pub unit: &'static str,
    pub baseline: Option<&'static str>,
    pub baseline_value: Option<f64>,
    pub ratio: Option<f64>,
    pub goal_ratio: Option<f64>,
    /// The goal in words, for the table (a ratio or an absolute bound).
    #[serde(skip)]
    pub goal: Option<&'static str>,
}

impl Figure {
    /// Keel's `value` beside the baseline's `baseline_value`.
    pub fn ratio(
        scenario: &str,
        value: f64,
        unit: &'static str,
        baseline: &'static str,
        baseline_value: f64,
        goal_ratio: Option<f64>,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            value: Some(value),
            unit,
            baseline: Some(baseline),
            baseline_value: Some(baseline_value),
            ratio: (baseline_value > 0.0).then(|| value / baseline_value),
            goal_ratio,
            goal: None,
        }
    }

    /// A figure with an absolute goal (a latency), or none, and no baseline.
    pub fn absolute(
        scenario: &str,
        value: f64,
        unit: &'static str,
        goal: Option<&'static str>,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            value: Some(value),
            unit,
            baseline: None,
            baseline_value: None,
            ratio: None,
            goal_ratio: None,
            goal,
        }
    }

    /// A scenario that did not produce its figures.
    pub fn failed(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            value: None,
            unit: "",
            baseline: None,
            baseline_value: None,
            ratio: None,
            goal_ratio: None,
            goal: Some("failed: see above"),
        }
    }
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// Prints the table and writes the JSON next to the other build outputs.
pub fn publish(figures: &[Figure], json: &Path) -> anyhow::Result<()> {
    println!();
    println!(
        "{:<22} {:>11} {:<12} {:<44} {:>11} {:>6} {:>6}",
        "scenario", "keel", "unit", "baseline (same run)", "baseline", "ratio", "goal"
    );
    for f in figures {
        let goal = match (f.goal_ratio, f.goal) {
            (Some(ratio), _) => format!("{ratio:.2}"),
            (None, Some(goal)) => goal.to_owned(),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{:<22} {:>11} {:<12} {:<44} {:>11} {:>6} {goal}",
            f.scenario,
            number(f.value),
            f.unit,
            f.baseline.unwrap_or("-"),
            number(f.baseline_value),
            f.ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
        );
    }
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json, serde_json::to_string_pretty(figures)?)?;
    println!("\nwritten to {}", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_json_has_the_documented_fields_and_ratios() {
        let figures = [
            Figure::ratio("publish", 80.0, "events/s", "bare", 100.0, Some(0.8)),
            Figure::absolute("e2e p99", 2.5, "ms", Some("< 100 ms")),
            Figure::failed("fanout"),
        ];
        let path = std::env::temp_dir().join(format!("keel-bench-{}.json", uuid::Uuid::new_v4()));
        publish(&figures, &path).unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        let fields: Vec<&str> = rows[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "scenario",
            "value",
            "unit",
            "baseline",
            "baseline_value",
            "ratio",
            "goal_ratio",
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
        assert_eq!(rows[0]["ratio"], 0.8);
        assert_eq!(rows[1]["baseline"], serde_json::Value::Null);
        assert_eq!(rows[2]["value"], serde_json::Value::Null);
    }
}
