//! Plain atomic counters (kept by crates without a metrics dependency, or
//! read by tests) exposed as Prometheus counters at scrape time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// Reads one counter's value.
type Read = Box<dyn Fn() -> u64 + Send + Sync>;

/// A set of counters, each a name (prometheus-client appends `_total`), a
/// help text and a function reading its value. Register it with
/// `Registry::register_collector`.
#[derive(Default)]
pub struct AtomicCounters {
    counters: Vec<(&'static str, &'static str, Read)>,
}

impl fmt::Debug for AtomicCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.counters.iter().map(|(n, _, _)| *n).collect();
        f.debug_struct("AtomicCounters")
            .field("names", &names)
            .finish()
    }
}

impl AtomicCounters {
    /// Adds the counter `field(&owner)`, read at each scrape.
    pub fn with<T: Send + Sync + 'static>(
        mut self,
        name: &'static str,
        help: &'static str,
        owner: &Arc<T>,
        field: fn(&T) -> &AtomicU64,
    ) -> Self {
        let owner = owner.clone();
        let read = move || field(&owner).load(Ordering::Relaxed);
        self.counters.push((name, help, Box::new(read)));
        self
    }
}

impl Collector for AtomicCounters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        for (name, help, read) in &self.counters {
            let counter = ConstCounter::new(read());
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[derive(Default)]
    struct Stats {
        hits: AtomicU64,
    }

    #[test]
    fn counters_are_read_at_each_scrape() {
        let stats = Arc::new(Stats::default());
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("demo")
            .register_collector(Box::new(AtomicCounters::default().with(
                "hits",
                "Hits",
                &stats,
                |s| &s.hits,
            )));
        let scrape = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert!(scrape().contains("demo_hits_total 0"), "{}", scrape());
        stats.hits.fetch_add(3, Ordering::Relaxed);
        assert!(scrape().contains("demo_hits_total 3"), "{}", scrape());
        assert!(
            scrape().contains("# TYPE demo_hits counter"),
            "{}",
            scrape()
        );
    }
}
