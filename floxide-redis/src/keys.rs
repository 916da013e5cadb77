//! The one place that builds key names. See the crate documentation for the layout.

/// Key names of one deployment (one key prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    partitions: u32,
}

impl Keys {
    pub(crate) fn new(prefix: &str, partitions: u32) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
        }
    }

    /// The partition of a run (or of an idempotency key): a stable hash of its id.
    pub(crate) fn partition_of(&self, run_id: &str) -> u32 {
        let h = run_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (h % u64::from(self.partitions)) as u32
    }

    /// Every partition.
    pub(crate) fn all(&self) -> impl Iterator<Item = u32> {
        0..self.partitions
    }

    /// `<prefix>{p<N>}:` — the hash tag keeps a partition's keys in one cluster slot.
    pub(crate) fn partition(&self, p: u32) -> String {
        format!("{}{{p{p}}}:", self.prefix)
    }

    pub(crate) fn partition_of_run(&self, run_id: &str) -> String {
        self.partition(self.partition_of(run_id))
    }

    pub(crate) fn run(pfx: &str, run_id: &str) -> String {
        format!("{pfx}r:{run_id}")
    }
    pub(crate) fn items(pfx: &str, run_id: &str) -> String {
        format!("{pfx}i:{run_id}")
    }
    pub(crate) fn outputs(pfx: &str, run_id: &str) -> String {
        format!("{pfx}outs:{run_id}")
    }
    pub(crate) fn errors(pfx: &str, run_id: &str) -> String {
        format!("{pfx}errs:{run_id}")
    }
    /// A workflow's queue of ready entries (`<item id>:<run>`, and `@<run>` resume markers).
    pub(crate) fn queue(pfx: &str, workflow: &str) -> String {
        format!("{pfx}q:{workflow}")
    }
    pub(crate) fn wake(pfx: &str, workflow: &str) -> String {
        format!("{pfx}wake:{workflow}")
    }
    pub(crate) fn runs(pfx: &str) -> String {
        format!("{pfx}runs")
    }
    /// Leases (`L<entry>`, by expiry) and retries (`R<entry>`, by due time), in one set.
    pub(crate) fn timers(pfx: &str) -> String {
        format!("{pfx}tm")
    }
    /// Dead letters by entry (JSON, with the item's bytes).
    pub(crate) fn dead_letters(pfx: &str) -> String {
        format!("{pfx}dlh")
    }
    /// Dead letters by time (for listing and their retention).
    pub(crate) fn dead_letter_index(pfx: &str) -> String {
        format!("{pfx}dlq")
    }
    /// Expired leases handed back to the queue so far (a counter).
    pub(crate) fn reclaimed(pfx: &str) -> String {
        format!("{pfx}reclaimed")
    }
    /// Run status changes are published here (one channel per partition).
    pub(crate) fn events(pfx: &str) -> String {
        format!("{pfx}ev")
    }
    /// The deployment's settings that every client must share (the partition count).
    pub(crate) fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }
    /// Worker health reports (one hash for the deployment; never part of a multi-key script).
    pub(crate) fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
    /// Every key of the deployment, for clearing it.
    pub(crate) fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn a_partitions_keys_share_one_hash_tag() {
        let keys = Keys::new("app:", 4);
        let pfx = keys.partition_of_run("run-1");
        for key in [
            Keys::run(&pfx, "run-1"),
            Keys::queue(&pfx, "Flow"),
            Keys::timers(&pfx),
        ] {
            let tag = &key[key.find('{').unwrap()..=key.find('}').unwrap()];
            assert_eq!(tag, &pfx[pfx.find('{').unwrap()..=pfx.find('}').unwrap()]);
            assert!(key.starts_with("app:{p"));
        }
        assert_eq!(keys.partition_of("run-1"), keys.partition_of("run-1"));
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| keys.partition_of(&format!("run-{i}")))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
