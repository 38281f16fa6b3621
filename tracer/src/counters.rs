//! One description per counter of the tracer (its name, what it counts, its value), so that
//! the stats log line and `/metrics` are both rendered from the same table: a new counter is
//! added in one place, and a name never differs between the two.

/// What a counter's value means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Events since the start.
    Count,
    /// Something lost since the start (bytes, records, connections): any loss turns the stats
    /// line into a warning.
    Loss,
    /// A current level (a gauge): connections open, spans queued.
    Level,
    /// What the tracer itself has used since the start (CPU time): a counter like `Count`, but
    /// no news on its own, so it never makes the stats line log again by itself (an idle daemon
    /// still wakes, and its CPU time moves on every tick).
    Usage,
}

/// One counter: `name` is its key in the log line and, as `kafka_tracer_<name>_total` (or
/// `kafka_tracer_<name>` for a level), its name in `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
    pub kind: Kind,
}

impl Counter {
    pub const fn count(name: &'static str, value: u64, help: &'static str) -> Self {
        Self {
            name,
            help,
            value,
            kind: Kind::Count,
        }
    }

    pub const fn loss(name: &'static str, value: u64, help: &'static str) -> Self {
        Self {
            name,
            help,
            value,
            kind: Kind::Loss,
        }
    }

    pub const fn level(name: &'static str, value: u64, help: &'static str) -> Self {
        Self {
            name,
            help,
            value,
            kind: Kind::Level,
        }
    }

    pub const fn usage(name: &'static str, value: u64, help: &'static str) -> Self {
        Self {
            name,
            help,
            value,
            kind: Kind::Usage,
        }
    }
}

/// The log form of a table: `name=value` pairs separated by spaces.
pub fn log_line(counters: &[Counter]) -> String {
    let mut line = String::new();
    for c in counters {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(c.name);
        line.push('=');
        line.push_str(&c.value.to_string());
    }
    line
}

/// Whether anything but usage differs between two tables: worth a stats line.
pub fn news(now: &[Counter], before: &[Counter]) -> bool {
    fn events(t: &[Counter]) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        t.iter()
            .filter(|c| c.kind != Kind::Usage)
            .map(|c| (c.name, c.value))
    }
    !events(now).eq(events(before))
}

/// The sum of the table's losses.
pub fn lost(counters: &[Counter]) -> u64 {
    counters
        .iter()
        .filter(|c| c.kind == Kind::Loss)
        .fold(0u64, |sum, c| sum.saturating_add(c.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_logs_every_counter_and_sums_only_losses() {
        let t = [
            Counter::count("frames", 3, "frames"),
            Counter::loss("dropped", 2, "dropped"),
            Counter::level("queued", 7, "queued"),
            Counter::loss("refused", 1, "refused"),
        ];
        assert_eq!(log_line(&t), "frames=3 dropped=2 queued=7 refused=1");
        assert_eq!(lost(&t), 3);
    }

    #[test]
    fn only_events_are_news() {
        let table = |frames, cpu| {
            [
                Counter::count("frames", frames, "frames"),
                Counter::usage("daemon_cpu_ns", cpu, "cpu"),
            ]
        };
        assert!(!news(&table(3, 20), &table(3, 10)), "CPU time alone");
        assert!(news(&table(4, 10), &table(3, 10)), "a new frame");
        assert!(news(&table(3, 10), &[]), "the first table");
        assert_eq!(log_line(&table(3, 20)), "frames=3 daemon_cpu_ns=20");
    }
}
