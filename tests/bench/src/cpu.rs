//! Where the machine's CPU went during a phase, by process, from /proc: on shared cores
//! a rate moves with whatever else runs; what each process spends per message is the
//! figure that says why.

use std::{collections::BTreeMap, process::Command, time::Duration};

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/<pid>/stat` from `state` on (the command name may hold spaces).
fn stat_fields(pid: &str) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect(),
    )
}

/// utime + stime (the 14th and 15th fields of the line), in seconds.
fn own_seconds(fields: &[f64]) -> f64 {
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / clock_ticks()
}

/// cutime + cstime (the 16th and 17th fields): the children it has reaped, in seconds.
fn children_seconds(fields: &[f64]) -> f64 {
    (fields.get(13).unwrap_or(&0.0) + fields.get(14).unwrap_or(&0.0)) / clock_ticks()
}

/// The machine's cores (at least one).
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The group a process's CPU is counted in: the services by name, PostgreSQL's
/// backends together, RabbitMQ's Erlang VM as the broker.
fn group(comm: &str) -> Option<&'static str> {
    Some(match comm {
        "beam.smp" => "broker",
        "ingest" => "ingest",
        "passthrough" => "passthrough",
        "fulfill" => "fulfill",
        c if c.starts_with("postgres") => "postgres",
        _ => return None,
    })
}

/// CPU seconds used so far, machine-wide and per group.
#[derive(Default)]
pub struct Snapshot {
    /// Every core's busy time (all but idle and iowait), from /proc/stat.
    machine: f64,
    groups: BTreeMap<&'static str, f64>,
}

impl Snapshot {
    pub fn take() -> Self {
        let ticks = clock_ticks();
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let f: Vec<f64> = stat
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap_or(0.0))
                    .collect();
                // user nice system idle iowait irq softirq steal …
                Some((f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?) / ticks)
            })
            .unwrap_or(0.0);
        let mut groups: BTreeMap<&'static str, f64> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            // With the children each has reaped: a PostgreSQL backend that ends within a
            // phase (pgbench's, a short-lived connection's) moves its time to the
            // postmaster's cutime and so stays in the group.
            if let (Some(g), Some(f)) = (group(comm.trim()), stat_fields(&pid)) {
                *groups.entry(g).or_default() += own_seconds(&f) + children_seconds(&f);
            }
        }
        // This process (the load generators of its own, the fake Stripe) and the children
        // it has waited for (wrk, pgbench, which run to their end inside a phase).
        if let Some(own) = stat_fields("self") {
            groups.insert("bench", own_seconds(&own) + children_seconds(&own));
        }
        Self { machine, groups }
    }

    /// Microseconds per message of each group between `self` and `later`, and the share
    /// of the machine's cores that was busy over `wall`.
    pub fn per_message(&self, later: &Self, messages: u64, wall: Duration) -> Account {
        let per = |a: f64, b: f64| 1e6 * (b - a).max(0.0) / messages.max(1) as f64;
        let groups: BTreeMap<_, _> = later
            .groups
            .iter()
            .map(|(g, b)| (*g, per(self.groups.get(g).copied().unwrap_or(0.0), *b)))
            .collect();
        let machine = per(self.machine, later.machine);
        Account {
            other: (machine - groups.values().sum::<f64>()).max(0.0),
            machine,
            groups,
            busy: (later.machine - self.machine) / (wall.as_secs_f64() * cores()),
        }
    }
}

/// CPU µs per message, by group, over one phase.
#[derive(Default)]
pub struct Account {
    groups: BTreeMap<&'static str, f64>,
    /// The machine's busy time not in a group (the kernel's own threads, other programs).
    pub other: f64,
    pub machine: f64,
    /// Share of all cores busy during the phase.
    pub busy: f64,
}

impl Account {
    /// µs per message of a group: `broker`, `ingest`, `fulfill`, `postgres`, or `bench`
    /// (this process and the load generators it ran).
    pub fn of(&self, group: &str) -> f64 {
        self.groups.get(group).copied().unwrap_or(0.0)
    }

    /// Prints `groups` as a markdown table, one row per phase (medians of its accounts).
    pub fn table(phases: &[(&str, &[Account])], groups: &[(&str, &str)]) {
        let med = |v: &[Account], f: &dyn Fn(&Account) -> f64| {
            crate::ingest_load::median(v.iter().map(f).collect())
        };
        let header: Vec<String> = groups
            .iter()
            .map(|(_, label)| format!("{label} µs"))
            .collect();
        println!(
            "\n| phase (medians, CPU per message) | {} | other µs | all µs | cores busy |",
            header.join(" | ")
        );
        println!("|---|{}---|---|---|", "---|".repeat(groups.len()));
        for (name, v) in phases {
            let cells: Vec<String> = groups
                .iter()
                .map(|(g, _)| format!("{:.1}", med(v, &|a| a.of(g))))
                .collect();
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.0} % |",
                cells.join(" | "),
                med(v, &|a| a.other),
                med(v, &|a| a.machine),
                100.0 * med(v, &|a| a.busy),
            );
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CPU µs/message:")?;
        for (g, us) in &self.groups {
            write!(f, " {g} {us:.1},")?;
        }
        write!(
            f,
            " other {:.1}, all {:.1} (cores {:.0} % busy)",
            self.other,
            self.machine,
            100.0 * self.busy
        )
    }
}
