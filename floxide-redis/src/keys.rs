//! The one place that builds key names. See the crate documentation for the layout.

/// Key names of one deployment (one key prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    partitions: u32,
    /// Each partition's key prefix, `<prefix>{<tag>}:`.
    partition_prefixes: Vec<String>,
}

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// The cluster slot of a hash tag (CRC16/XMODEM, as Redis computes it).
pub(crate) fn slot_of(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS
}

/// The cluster slot of `key`: of its hash tag when it has one, as Redis computes it.
pub(crate) fn slot_of_key(key: &str) -> u16 {
    let tag = key
        .find('{')
        .and_then(|open| {
            let close = open + 1 + key[open + 1..].find('}')?;
            (close > open + 1).then(|| &key[open + 1..close])
        })
        .unwrap_or(key);
    slot_of(tag) as u16
}

impl Keys {
    /// The keys of deployment `prefix` over `partitions` partitions. On one server the hash
    /// tags are `p0`, `p1`, …; on a cluster (`spread`) partition `k` of `n` gets the tag
    /// `p<k>.<s>` with the smallest `s` that puts it in the `k`-th of `n` equal slot ranges,
    /// so that partitions fall evenly over masters holding equal ranges.
    pub(crate) fn new(prefix: &str, partitions: u32, spread: bool) -> Self {
        let partitions = partitions.max(1);
        let partition_prefixes = (0..partitions)
            .map(|k| {
                let tag = if spread {
                    let (low, high) = (k * SLOTS / partitions, (k + 1) * SLOTS / partitions);
                    (0u32..)
                        .map(|s| format!("p{k}.{s}"))
                        .find(|tag| (low..high).contains(&slot_of(tag)))
                        .unwrap_or_else(|| format!("p{k}"))
                } else {
                    format!("p{k}")
                };
                format!("{prefix}{{{tag}}}:")
            })
            .collect();
        Keys {
            prefix: prefix.to_owned(),
            partitions,
            partition_prefixes,
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

    /// `<prefix>{<tag>}:` — the hash tag keeps a partition's keys in one cluster slot.
    pub(crate) fn partition(&self, p: u32) -> String {
        self.partition_prefixes[(p % self.partitions) as usize].clone()
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
    /// A run's step history (a list of lines, see `lua/common/base.lua`).
    pub(crate) fn history(pfx: &str, run_id: &str) -> String {
        format!("{pfx}sh:{run_id}")
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
    /// On a cluster, the names of workflows with new ready work are published here (one
    /// sharded channel per partition), for idle workers.
    pub(crate) fn wakes(pfx: &str) -> String {
        format!("{pfx}wk")
    }
    /// A key no script ever writes, declared by every script next to its real keys: while its
    /// slot migrates, a cluster refuses such a call (`TRYAGAIN`) on both nodes instead of
    /// running it over a half-moved partition (see `RedisBackend::invoke`).
    pub(crate) fn guard(pfx: &str) -> String {
        format!("{pfx}guard")
    }
    /// The deployment's settings that every client must share (the partition count).
    pub(crate) fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }
    /// Worker health reports (one hash for the deployment; never part of a multi-key script).
    pub(crate) fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
    /// The registered workflow graphs (one hash for the deployment; never part of a script).
    pub(crate) fn graphs(&self) -> String {
        format!("{}graphs", self.prefix)
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
        let keys = Keys::new("app:", 4, false);
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

    #[test]
    fn cluster_partitions_fall_evenly_over_the_slots() {
        let keys = Keys::new("app:", 48, true);
        for k in 0..48 {
            let pfx = keys.partition(k);
            let tag = &pfx[pfx.find('{').unwrap() + 1..pfx.find('}').unwrap()];
            let slot = super::slot_of(tag);
            assert!(
                slot >= k * 16384 / 48 && slot < (k + 1) * 16384 / 48,
                "{pfx} in slot {slot}"
            );
        }
        // Three masters with equal ranges get 16 partitions each.
        let per_master: Vec<usize> = (0..3)
            .map(|m| {
                (0..48)
                    .filter(|&k| {
                        let pfx = keys.partition(k);
                        let slot = super::slot_of(
                            &pfx[pfx.find('{').unwrap() + 1..pfx.find('}').unwrap()],
                        );
                        slot * 3 / 16384 == m
                    })
                    .count()
            })
            .collect();
        assert_eq!(per_master, vec![16, 16, 16]);
        // The known slot of a key, as Redis computes it (`CLUSTER KEYSLOT foo` is 12182).
        assert_eq!(super::slot_of("foo"), 12182);
    }
}
