//! Results: one row per measured figure, printed as a Markdown table and
//! written as JSON for `bench/chart.py`.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// A target from the benchmark issue: Busbar ÷ `peer` should be at most /
/// at least `ratio` (or, with no peer, the Busbar figure itself).
#[derive(Debug, Clone)]
pub struct Target {
    pub peer: Option<&'static str>,
    pub at_most: bool,
    pub value: f64,
}

impl Target {
    pub fn ratio_at_most(peer: &'static str, value: f64) -> Target {
        Target {
            peer: Some(peer),
            at_most: true,
            value,
        }
    }

    pub fn ratio_at_least(peer: &'static str, value: f64) -> Target {
        Target {
            peer: Some(peer),
            at_most: false,
            value,
        }
    }

    pub fn absolute_at_most(value: f64) -> Target {
        Target {
            peer: None,
            at_most: true,
            value,
        }
    }

    pub fn absolute_at_least(value: f64) -> Target {
        Target {
            peer: None,
            at_most: false,
            value,
        }
    }

    fn describe(&self, unit: &str) -> String {
        let op = if self.at_most { "≤" } else { "≥" };
        match self.peer {
            Some(peer) => format!("÷{peer} {op} {}", self.value),
            None => format!("{op} {} {unit}", self.value),
        }
    }

    /// Whether the row meets it; None when the figure is missing.
    fn met(&self, row: &Row) -> Option<bool> {
        let figure = match self.peer {
            Some(peer) => row.ratio(peer)?,
            None => row.busbar,
        };
        if !figure.is_finite() {
            return None;
        }
        Some(if self.at_most {
            figure <= self.value
        } else {
            figure >= self.value
        })
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub busbar: f64,
    /// Peer name and figure, in display order.
    pub peers: Vec<(&'static str, f64)>,
    pub target: Option<Target>,
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &'static str, better: Better, busbar: f64) -> Row {
        Row {
            name: name.into(),
            unit,
            better,
            busbar,
            peers: Vec::new(),
            target: None,
            notes: Vec::new(),
        }
    }

    pub fn peer(mut self, name: &'static str, value: Option<f64>) -> Row {
        if let Some(value) = value {
            self.peers.push((name, value));
        }
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        if !note.is_empty() && !self.notes.contains(&note) {
            self.notes.push(note);
        }
        self
    }

    /// Busbar ÷ peer.
    pub fn ratio(&self, peer: &str) -> Option<f64> {
        let (_, value) = self.peers.iter().find(|(name, _)| *name == peer)?;
        Some(self.busbar / value)
    }
}

/// A figure with about three significant digits.
pub fn fmt(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A count for a row name: "10 M", "200 k", "500".
pub fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{} k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The results as a Markdown table (also readable on a terminal).
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![
        "| scenario | unit | better | busbar | peers | busbar ÷ peer | target |".to_string(),
        "|---|---|---|---:|---|---|---|".to_string(),
    ];
    for row in rows {
        let peers = if row.peers.is_empty() {
            "-".to_string()
        } else {
            row.peers
                .iter()
                .map(|(name, value)| format!("{name} {}", fmt(*value)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ratios = if row.peers.is_empty() {
            "-".to_string()
        } else {
            row.peers
                .iter()
                .map(|(name, _)| format!("{} ({name})", fmt(row.ratio(name).unwrap_or(f64::NAN))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let target = match &row.target {
            Some(target) => {
                let verdict = match target.met(row) {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "not measured",
                };
                format!("{} {verdict}", target.describe(row.unit))
            }
            None => String::new(),
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {peers} | {ratios} | {target} |",
            row.name,
            row.unit,
            row.better.as_str(),
            fmt(row.busbar),
        ));
    }
    lines.join("\n")
}

fn number(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

/// One JSON object per row.
pub fn json(rows: &[Row], quick: bool, date: &str, machine: &Value) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                let peers: serde_json::Map<String, Value> = row
                    .peers
                    .iter()
                    .map(|(name, value)| (name.to_string(), number(*value)))
                    .collect();
                let ratios: serde_json::Map<String, Value> = row
                    .peers
                    .iter()
                    .map(|(name, _)| {
                        (
                            name.to_string(),
                            number(row.ratio(name).unwrap_or(f64::NAN)),
                        )
                    })
                    .collect();
                let target = row.target.as_ref().map(|t| {
                    json!({
                        "peer": t.peer,
                        "at_most": t.at_most,
                        "value": t.value,
                        "met": t.met(row),
                    })
                });
                json!({
                    "name": row.name,
                    "unit": row.unit,
                    "busbar": number(row.busbar),
                    "peers": peers,
                    "ratios": ratios,
                    "better": row.better.as_str(),
                    "target": target,
                    "notes": row.notes,
                    "quick": quick,
                    "date": date,
                    "machine": machine,
                })
            })
            .collect(),
    )
}

/// Cores, CPU model, kernel and memory of this machine.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|k| !k.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|k| k.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    });
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": model,
        "kernel": kernel,
        "memory_gib": memory_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
    })
}

/// One line describing the machine.
pub fn machine_line(machine: &Value) -> String {
    format!(
        "{} cores, {}, Linux {}, {} GiB RAM",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("unknown CPU"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["memory_gib"]
    )
}

/// UTC date and time now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let row = Row::new("x", "µs", Better::Lower, 120.0)
            .peer("tonic", Some(100.0))
            .peer("nats", None)
            .target(Target::ratio_at_most("tonic", 1.2));
        assert_eq!(row.ratio("tonic"), Some(1.2));
        assert_eq!(row.ratio("nats"), None);
        assert!(table(&[row]).contains("1.20 (tonic)"));
    }

    #[test]
    fn date_format() {
        let now = utc_now();
        assert_eq!(now.len(), 20);
        assert!(now.starts_with("20"));
    }
}
