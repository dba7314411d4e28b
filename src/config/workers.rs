//! `[server] workers`: "auto" (one event loop per core, the default) or a number of event loops,
//! and how many threads that means on this machine.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many event loops serve traffic. A count is validated to be at least 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workers {
    /// One per core the process may run on (`std::thread::available_parallelism`).
    #[default]
    Auto,
    Count(usize),
}

impl Workers {
    /// The number of event loops to start here.
    pub fn count(self) -> usize {
        match self {
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Workers::Count(n) => n,
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Workers, D::Error> {
        de.deserialize_any(WorkersVisitor)
    }
}

struct WorkersVisitor;

impl Visitor<'_> for WorkersVisitor {
    type Value = Workers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"auto\" or a number of workers")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
        match v {
            "auto" => Ok(Workers::Auto),
            other => Err(E::custom(format!(
                "`{other}`: expected \"auto\" or a number of workers"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
        usize::try_from(v)
            .map(Workers::Count)
            .map_err(|_| E::custom(format!("{v} workers is too many")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "{v}: expected \"auto\" or a number of workers"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Table {
        workers: Workers,
    }

    fn parse(value: &str) -> Result<Workers, String> {
        toml::from_str::<Table>(&format!("workers = {value}"))
            .map(|t| t.workers)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn auto_is_one_worker_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(parse("\"auto\"").unwrap().count(), cores);
    }

    #[test]
    fn a_number_is_that_many_workers() {
        assert_eq!(parse("3"), Ok(Workers::Count(3)));
    }

    #[test]
    fn another_word_is_refused_by_name() {
        assert_eq!(
            parse("\"many\""),
            Err("`many`: expected \"auto\" or a number of workers".into())
        );
    }

    #[test]
    fn a_negative_number_is_refused() {
        assert_eq!(
            parse("-1"),
            Err("-1: expected \"auto\" or a number of workers".into())
        );
    }

    #[test]
    fn both_forms_print_back_as_they_were_written() {
        for (workers, text) in [(Workers::Auto, "\"auto\""), (Workers::Count(2), "2")] {
            let printed = toml::to_string(&Table { workers }).unwrap();
            assert_eq!(printed.trim(), format!("workers = {text}"));
        }
    }
}
