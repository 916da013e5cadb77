//! Property tests: every `Merge` impl provided by floxide-core is a join (SEMANTICS.md G3):
//! commutative, associative and idempotent, with `Default` as its bottom.
//!
//! The derive macro lives in the facade crate; its laws are tested in `/tests/merge_derive.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;

use floxide_core::{EventId, EventLog, Fixed, Merge, SharedState};
use proptest::collection::{btree_map, btree_set, hash_map, hash_set, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// `x ⊔ y`, computed on copies so that the inputs are left as they are.
fn join<T: Merge>(copy: &impl Fn(&T) -> T, x: &T, y: &T) -> T {
    let mut merged = copy(x);
    merged.merge(copy(y));
    merged
}

/// Checks the join laws on `a`, `b`, `c`. `copy` makes an independent copy (for the types
/// whose `clone` shares state) and `view` the value compared with `PartialEq`.
fn check_laws<T, V>(
    a: &T,
    b: &T,
    c: &T,
    copy: impl Fn(&T) -> T,
    view: impl Fn(&T) -> V,
) -> Result<(), TestCaseError>
where
    T: Merge,
    V: PartialEq + Debug,
{
    let ab = join(&copy, a, b);
    let ba = join(&copy, b, a);
    prop_assert_eq!(view(&ab), view(&ba), "not commutative");

    let ab_c = join(&copy, &ab, c);
    let bc = join(&copy, b, c);
    let a_bc = join(&copy, a, &bc);
    prop_assert_eq!(view(&ab_c), view(&a_bc), "not associative");

    let aa = join(&copy, a, a);
    prop_assert_eq!(view(&aa), view(a), "not idempotent");

    // A commit applied twice changes nothing: (a ⊔ b) ⊔ b == a ⊔ b.
    let ab_b = join(&copy, &ab, b);
    prop_assert_eq!(
        view(&ab_b),
        view(&ab),
        "re-merging an input changed the result"
    );

    // The default value is the bottom.
    let bottom = T::default();
    prop_assert_eq!(
        view(&join(&copy, a, &bottom)),
        view(a),
        "default is not neutral"
    );
    prop_assert_eq!(
        view(&join(&copy, &bottom, a)),
        view(a),
        "default is not neutral"
    );
    Ok(())
}

/// The laws for a plain value type (where `clone` is an independent copy).
fn check_value_laws<T>(a: &T, b: &T, c: &T) -> Result<(), TestCaseError>
where
    T: Merge + Clone + PartialEq + Debug,
{
    check_laws(a, b, c, T::clone, T::clone)
}

// ---- strategies -------------------------------------------------------------------------

/// Small sets over a small domain, so that inputs overlap often.
fn small_set() -> impl Strategy<Value = BTreeSet<u8>> {
    btree_set(0u8..8, 0..6)
}

fn small_hash_set() -> impl Strategy<Value = HashSet<u8>> {
    hash_set(0u8..8, 0..6)
}

fn set_map() -> impl Strategy<Value = BTreeMap<u8, BTreeSet<u8>>> {
    btree_map(0u8..4, small_set(), 0..4)
}

fn set_hash_map() -> impl Strategy<Value = HashMap<u8, HashSet<u8>>> {
    hash_map(0u8..4, small_hash_set(), 0..4)
}

/// Often the default (unset), often a small value (so that two inputs agree or conflict),
/// sometimes anything.
fn fixed_u32() -> impl Strategy<Value = Fixed<u32>> {
    prop_oneof![Just(0u32), 0u32..4, 8u32..12, any::<u32>()].prop_map(Fixed::new)
}

fn fixed_string() -> impl Strategy<Value = Fixed<String>> {
    prop_oneof![
        Just(String::new()),
        "[ab]{1,2}",
        "[\"\\\\a-c]{0,3}",
        any::<String>()
    ]
    .prop_map(Fixed::new)
}

/// What happens to the replicas of one run's event log.
#[derive(Debug, Clone)]
enum Op {
    /// Replica `.0` appends `.1`.
    Append(usize, u32),
    /// Replica `to` merges a copy of replica `from` (a worker reading the stored context).
    Sync { from: usize, to: usize },
}

/// Event payloads: a small domain (equal payloads with different ids) or anything.
fn payload() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..4, any::<u32>()]
}

fn history() -> impl Strategy<Value = (Vec<u32>, Vec<Op>)> {
    let op = prop_oneof![
        3 => (0usize..3, payload()).prop_map(|(i, e)| Op::Append(i, e)),
        1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
    ];
    (vec(payload(), 0..4), vec(op, 0..14))
}

fn roundtrip<E>(log: &EventLog<E>) -> EventLog<E>
where
    E: serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_str(&serde_json::to_string(log).expect("serialize")).expect("deserialize")
}

/// Three replicas of one log: a common base, then independent copies (one made by a serde
/// round-trip, like a worker reading the stored context) that append and sync with each other.
fn build_logs(base: &[u32], ops: &[Op]) -> [EventLog<u32>; 3] {
    let base_log = EventLog::new();
    for e in base {
        base_log.append(*e);
    }
    let mut logs = [
        base_log.deep_clone(),
        roundtrip(&base_log),
        base_log.deep_clone(),
    ];
    for op in ops {
        match *op {
            Op::Append(i, e) => {
                logs[i].append(e);
            }
            Op::Sync { from, to } => {
                if from != to {
                    let copy = logs[from].deep_clone();
                    logs[to].merge(copy);
                }
            }
        }
    }
    logs
}

fn ids(log: &EventLog<u32>) -> Vec<EventId> {
    log.iter_with_ids().map(|(id, _)| id).collect()
}

fn shared_copy(s: &SharedState<BTreeSet<u8>>) -> SharedState<BTreeSet<u8>> {
    SharedState::new(s.try_get().expect("unlocked").clone())
}

fn shared_view(s: &SharedState<BTreeSet<u8>>) -> BTreeSet<u8> {
    s.try_get().expect("unlocked").clone()
}

// ---- the laws ---------------------------------------------------------------------------

#[test]
fn unit_is_a_join() {
    check_value_laws(&(), &(), &()).unwrap();
}

proptest! {
    #[test]
    fn option_of_set_is_a_join(
        a in proptest::option::of(small_set()),
        b in proptest::option::of(small_set()),
        c in proptest::option::of(small_set()),
    ) {
        check_value_laws(&a, &b, &c)?;
        // None is the bottom; two values are joined, not replaced.
        let ab = join(&Option::clone, &a, &b);
        match (&a, &b) {
            (None, None) => prop_assert_eq!(ab, None),
            (Some(x), None) | (None, Some(x)) => prop_assert_eq!(ab.as_ref(), Some(x)),
            (Some(x), Some(y)) => {
                let union: BTreeSet<u8> = x.union(y).copied().collect();
                prop_assert_eq!(ab, Some(union));
            }
        }
    }

    #[test]
    fn btree_set_is_a_join(a in small_set(), b in small_set(), c in small_set()) {
        check_value_laws(&a, &b, &c)?;
        let union: BTreeSet<u8> = a.union(&b).copied().collect();
        prop_assert_eq!(join(&BTreeSet::clone, &a, &b), union);
    }

    #[test]
    fn hash_set_is_a_join(a in small_hash_set(), b in small_hash_set(), c in small_hash_set()) {
        check_value_laws(&a, &b, &c)?;
        let union: HashSet<u8> = a.union(&b).copied().collect();
        prop_assert_eq!(join(&HashSet::clone, &a, &b), union);
    }

    #[test]
    fn btree_map_is_a_join(a in set_map(), b in set_map(), c in set_map()) {
        check_value_laws(&a, &b, &c)?;
        // Key union; the values under a shared key are joined.
        let ab = join(&BTreeMap::clone, &a, &b);
        let keys: BTreeSet<u8> = a.keys().chain(b.keys()).copied().collect();
        prop_assert_eq!(ab.keys().copied().collect::<BTreeSet<u8>>(), keys);
        for (k, v) in &ab {
            let mut expected = a.get(k).cloned().unwrap_or_default();
            expected.extend(b.get(k).cloned().unwrap_or_default());
            prop_assert_eq!(v, &expected);
        }
    }

    #[test]
    fn hash_map_is_a_join(a in set_hash_map(), b in set_hash_map(), c in set_hash_map()) {
        check_value_laws(&a, &b, &c)?;
        let ab = join(&HashMap::clone, &a, &b);
        let keys: HashSet<u8> = a.keys().chain(b.keys()).copied().collect();
        prop_assert_eq!(ab.keys().copied().collect::<HashSet<u8>>(), keys);
        for (k, v) in &ab {
            let mut expected = a.get(k).cloned().unwrap_or_default();
            expected.extend(b.get(k).cloned().unwrap_or_default());
            prop_assert_eq!(v, &expected);
        }
    }

    #[test]
    fn nested_maps_of_fixed_are_joins(
        a in btree_map(0u8..4, proptest::option::of(fixed_string()), 0..4),
        b in btree_map(0u8..4, proptest::option::of(fixed_string()), 0..4),
        c in btree_map(0u8..4, proptest::option::of(fixed_string()), 0..4),
        x in hash_map(0u8..4, fixed_u32(), 0..4),
        y in hash_map(0u8..4, fixed_u32(), 0..4),
        z in hash_map(0u8..4, fixed_u32(), 0..4),
    ) {
        check_value_laws(&a, &b, &c)?;
        check_value_laws(&x, &y, &z)?;
    }

    #[test]
    fn fixed_u32_is_a_join(a in fixed_u32(), b in fixed_u32(), c in fixed_u32()) {
        check_value_laws(&a, &b, &c)?;
        let ab = join(&Fixed::clone, &a, &b);
        // The default is the bottom; a set value survives a merge with an unset one, and
        // a conflict resolves to one of the two values.
        if *a.get() == 0 {
            prop_assert_eq!(&ab, &b);
        } else if *b.get() == 0 {
            prop_assert_eq!(&ab, &a);
        } else {
            prop_assert!(ab == a || ab == b, "{ab:?} is neither {a:?} nor {b:?}");
        }
    }

    #[test]
    fn fixed_string_is_a_join(a in fixed_string(), b in fixed_string(), c in fixed_string()) {
        check_value_laws(&a, &b, &c)?;
        let ab = join(&Fixed::clone, &a, &b);
        if a.is_empty() {
            prop_assert_eq!(&ab, &b);
        } else if b.is_empty() {
            prop_assert_eq!(&ab, &a);
        } else {
            prop_assert!(ab == a || ab == b, "{ab:?} is neither {a:?} nor {b:?}");
        }
    }

    #[test]
    fn event_log_is_a_join((base, ops) in history()) {
        let [a, b, c] = build_logs(&base, &ops);
        check_laws(&a, &b, &c, EventLog::deep_clone, EventLog::deep_clone)?;
        // The same with copies made by a serde round-trip (a worker's deserialized context).
        check_laws(&a, &b, &c, roundtrip, EventLog::deep_clone)?;
    }

    #[test]
    fn event_log_merge_is_the_union_by_id_and_keeps_each_replicas_order(
        (base, ops) in history()
    ) {
        let [a, b, _] = build_logs(&base, &ops);
        let mut ab = a.deep_clone();
        ab.merge(b.deep_clone());
        let merged = ids(&ab);

        // Every event once.
        let unique: BTreeSet<EventId> = merged.iter().copied().collect();
        prop_assert_eq!(unique.len(), merged.len(), "an event appears twice");
        let expected: BTreeSet<EventId> = ids(&a).into_iter().chain(ids(&b)).collect();
        prop_assert_eq!(&unique, &expected);

        // Each replica's events keep their relative order.
        for replica in [&a, &b] {
            let mine: BTreeSet<EventId> = ids(replica).into_iter().collect();
            let projected: Vec<EventId> =
                merged.iter().copied().filter(|id| mine.contains(id)).collect();
            prop_assert_eq!(projected, ids(replica));
        }

        // The payloads travel with their ids.
        let payloads: HashMap<EventId, u32> =
            a.iter_with_ids().chain(b.iter_with_ids()).collect();
        for (id, event) in ab.iter_with_ids() {
            prop_assert_eq!(payloads.get(&id), Some(&event));
        }
    }

    #[test]
    fn event_log_merge_through_shared_handles_is_the_same((base, ops) in history()) {
        let [a, b, _] = build_logs(&base, &ops);
        let mut owned = a.deep_clone();
        owned.merge(b.deep_clone());

        // `other` still has clones elsewhere (it cannot be taken), `self` too.
        let mut target = a.deep_clone();
        let target_clone = target.clone();
        let other = b.deep_clone();
        target.merge(other.clone());
        prop_assert_eq!(&target, &owned);
        prop_assert_eq!(&target_clone, &owned, "a clone of the target does not see the merge");
        prop_assert_eq!(&other, &b, "merging changed the merged-in log");

        // Merging a log with a clone of itself (same storage) changes nothing.
        let mut same = owned.deep_clone();
        same.merge(same.clone());
        prop_assert_eq!(&same, &owned);
    }

    #[test]
    fn shared_state_is_a_join(a in small_set(), b in small_set(), c in small_set()) {
        let (sa, sb, sc) = (SharedState::new(a.clone()), SharedState::new(b.clone()), SharedState::new(c));
        check_laws(&sa, &sb, &sc, shared_copy, shared_view)?;
        let union: BTreeSet<u8> = a.union(&b).copied().collect();
        prop_assert_eq!(shared_view(&join(&shared_copy, &sa, &sb)), union.clone());

        // Through shared handles (neither side is the sole owner): same result, seen by clones.
        let mut target = shared_copy(&sa);
        let target_clone = target.clone();
        let other = shared_copy(&sb);
        target.merge(other.clone());
        prop_assert_eq!(shared_view(&target), union.clone());
        prop_assert_eq!(shared_view(&target_clone), union);
        prop_assert_eq!(shared_view(&other), b);

        // Merging a clone of itself changes nothing.
        let mut same = shared_copy(&sa);
        same.merge(same.clone());
        prop_assert_eq!(shared_view(&same), a);
    }
}

/// A conflict between two set values resolves the same way in every order, including values
/// whose serialized forms order differently from the values themselves (9 vs 10).
#[test]
fn fixed_conflicts_resolve_independently_of_order() {
    for (x, y) in [(9u32, 10u32), (1, 2), (u32::MAX, 7)] {
        let (a, b) = (Fixed::new(x), Fixed::new(y));
        let mut ab = a.clone();
        ab.merge(b.clone());
        let mut ba = b.clone();
        ba.merge(a.clone());
        assert_eq!(ab, ba, "conflict {x} vs {y} depends on the merge order");
        assert!(ab == a || ab == b);
    }
    let orders = [
        ["x", "y", "z"],
        ["z", "y", "x"],
        ["y", "x", "z"],
        ["z", "x", "y"],
    ];
    let results: BTreeSet<String> = orders
        .iter()
        .map(|order| {
            let mut acc = Fixed::<String>::default();
            for v in order {
                acc.merge(Fixed::new((*v).to_owned()));
            }
            acc.into_inner()
        })
        .collect();
    assert_eq!(results.len(), 1, "results differ by order: {results:?}");
}

/// The law checker itself detects impls that are not joins.
#[test]
fn law_checker_rejects_non_joins() {
    /// Last writer wins: not commutative.
    #[derive(Default, Clone, PartialEq, Debug)]
    struct LastWriter(u8);
    impl Merge for LastWriter {
        fn merge(&mut self, other: Self) {
            *self = other;
        }
    }
    /// A counter: not idempotent.
    #[derive(Default, Clone, PartialEq, Debug)]
    struct Sum(u32);
    impl Merge for Sum {
        fn merge(&mut self, other: Self) {
            self.0 += other.0;
        }
    }
    /// Averages: commutative and idempotent, not associative.
    #[derive(Default, Clone, PartialEq, Debug)]
    struct Mean(u32);
    impl Merge for Mean {
        fn merge(&mut self, other: Self) {
            if self.0 == 0 {
                self.0 = other.0;
            } else if other.0 != 0 {
                self.0 = (self.0 + other.0) / 2;
            }
        }
    }
    assert!(check_value_laws(&LastWriter(1), &LastWriter(2), &LastWriter(3)).is_err());
    assert!(check_value_laws(&Sum(1), &Sum(0), &Sum(0)).is_err());
    assert!(check_value_laws(&Mean(2), &Mean(4), &Mean(8)).is_err());
    assert!(check_value_laws(&Mean(2), &Mean(2), &Mean(2)).is_ok());
}
