//! `#[derive(Merge)]` produces a join (SEMANTICS.md G3): the struct merges field by field,
//! so it is commutative, associative and idempotent when its fields are.
//!
//! Deliberately no `use floxide::Merge` or `use floxide::*`: the derive must work without
//! importing the trait.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use floxide::{EventLog, Fixed, SharedState};
use proptest::collection::{btree_map, btree_set, hash_set, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::{Deserialize, Serialize};

#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize, floxide::Merge)]
struct Tags {
    seen: BTreeSet<u8>,
    by_key: BTreeMap<u8, BTreeSet<u8>>,
    owner: Fixed<String>,
    flags: Option<HashSet<u8>>,
    nothing: (),
}

#[derive(Default, Debug, Clone, PartialEq, floxide::Merge)]
struct Pair(BTreeSet<u8>, Fixed<u32>);

#[derive(Default, Debug, Clone, PartialEq, floxide::Merge)]
struct Empty;

#[derive(Default, Debug, Clone, PartialEq, floxide::Merge)]
struct Generic<T> {
    inner: Option<T>,
    set: BTreeSet<u8>,
}

/// A run context with the interior-mutable types (whose `clone` shares state).
#[derive(Default, Debug, Serialize, Deserialize, floxide::Merge)]
struct RunCtx {
    log: EventLog<u32>,
    counters: SharedState<BTreeSet<u8>>,
    tags: Tags,
    limit: Fixed<u32>,
}

fn join<T: floxide::Merge>(copy: &impl Fn(&T) -> T, x: &T, y: &T) -> T {
    let mut merged = copy(x);
    floxide::Merge::merge(&mut merged, copy(y));
    merged
}

fn check_laws<T, V>(
    a: &T,
    b: &T,
    c: &T,
    copy: impl Fn(&T) -> T,
    view: impl Fn(&T) -> V,
) -> Result<(), TestCaseError>
where
    T: floxide::Merge,
    V: PartialEq + std::fmt::Debug,
{
    let ab = join(&copy, a, b);
    prop_assert_eq!(view(&ab), view(&join(&copy, b, a)), "not commutative");
    let ab_c = join(&copy, &ab, c);
    let a_bc = join(&copy, a, &join(&copy, b, c));
    prop_assert_eq!(view(&ab_c), view(&a_bc), "not associative");
    prop_assert_eq!(view(&join(&copy, a, a)), view(a), "not idempotent");
    prop_assert_eq!(
        view(&join(&copy, &ab, b)),
        view(&ab),
        "re-merge changed the result"
    );
    prop_assert_eq!(
        view(&join(&copy, a, &T::default())),
        view(a),
        "default is not neutral"
    );
    Ok(())
}

fn small_set() -> impl Strategy<Value = BTreeSet<u8>> {
    btree_set(0u8..8, 0..5)
}

fn tags() -> impl Strategy<Value = Tags> {
    (
        small_set(),
        btree_map(0u8..3, small_set(), 0..3),
        prop_oneof![Just(String::new()), "[ab]{1,2}"],
        proptest::option::of(hash_set(0u8..8, 0..4)),
    )
        .prop_map(|(seen, by_key, owner, flags)| Tags {
            seen,
            by_key,
            owner: Fixed::new(owner),
            flags,
            nothing: (),
        })
}

fn pair() -> impl Strategy<Value = Pair> {
    (small_set(), prop_oneof![Just(0u32), 1u32..4]).prop_map(|(s, f)| Pair(s, Fixed::new(f)))
}

fn generic() -> impl Strategy<Value = Generic<BTreeSet<u8>>> {
    (proptest::option::of(small_set()), small_set()).prop_map(|(inner, set)| Generic { inner, set })
}

fn roundtrip(ctx: &RunCtx) -> RunCtx {
    serde_json::from_str(&serde_json::to_string(ctx).expect("serialize")).expect("deserialize")
}

/// What a run context looks like to compare: every field, in order.
type View = (Vec<u32>, BTreeSet<u8>, Tags, u32);

fn view(ctx: &RunCtx) -> View {
    (
        ctx.log.events().collect(),
        ctx.counters.try_get().expect("unlocked").clone(),
        ctx.tags.clone(),
        *ctx.limit,
    )
}

/// Three workers' contexts of one run: a common base (deserialized copies of it, so that the
/// logs share history but not storage), then independent changes.
fn contexts() -> impl Strategy<Value = [RunCtx; 3]> {
    let changes = || {
        (
            vec(0u32..5, 0..3),
            small_set(),
            tags(),
            prop_oneof![Just(0u32), 1u32..4],
        )
    };
    (vec(0u32..5, 0..3), [changes(), changes(), changes()]).prop_map(|(base_events, workers)| {
        let base = RunCtx::default();
        for e in base_events {
            base.log.append(e);
        }
        workers.map(|(events, counters, tags, limit)| {
            let mut ctx = roundtrip(&base);
            for e in events {
                ctx.log.append(e);
            }
            ctx.counters.try_get().expect("unlocked").extend(counters);
            ctx.tags = tags;
            ctx.limit = Fixed::new(limit);
            ctx
        })
    })
}

proptest! {
    #[test]
    fn derived_struct_is_a_join(a in tags(), b in tags(), c in tags()) {
        check_laws(&a, &b, &c, Tags::clone, Tags::clone)?;
    }

    #[test]
    fn derived_struct_merges_field_by_field(a in tags(), b in tags()) {
        let ab = join(&Tags::clone, &a, &b);
        prop_assert_eq!(&ab.seen, &join(&BTreeSet::clone, &a.seen, &b.seen));
        prop_assert_eq!(&ab.by_key, &join(&BTreeMap::clone, &a.by_key, &b.by_key));
        prop_assert_eq!(&ab.owner, &join(&Fixed::clone, &a.owner, &b.owner));
        prop_assert_eq!(&ab.flags, &join(&Option::clone, &a.flags, &b.flags));
        let union: BTreeSet<u8> = a.seen.union(&b.seen).copied().collect();
        prop_assert_eq!(&ab.seen, &union);
    }

    #[test]
    fn derived_tuple_struct_is_a_join(a in pair(), b in pair(), c in pair()) {
        check_laws(&a, &b, &c, Pair::clone, Pair::clone)?;
        let ab = join(&Pair::clone, &a, &b);
        prop_assert_eq!(&ab.0, &a.0.union(&b.0).copied().collect::<BTreeSet<u8>>());
        prop_assert_eq!(&ab.1, &join(&Fixed::clone, &a.1, &b.1));
    }

    #[test]
    fn derived_generic_struct_is_a_join(a in generic(), b in generic(), c in generic()) {
        check_laws(&a, &b, &c, Generic::clone, Generic::clone)?;
    }

    #[test]
    fn derived_context_with_shared_types_is_a_join([a, b, c] in contexts()) {
        check_laws(&a, &b, &c, roundtrip, view)?;
        // The log is the union of the workers' events: base once, each worker's own once.
        let ab = join(&roundtrip, &a, &b);
        let n = |x: &RunCtx| x.log.len();
        let base = a.log.iter_with_ids()
            .filter(|(id, _)| b.log.iter_with_ids().any(|(j, _)| j == *id))
            .count();
        prop_assert_eq!(n(&ab), n(&a) + n(&b) - base);
    }
}

#[test]
fn derived_unit_struct_merges() {
    let mut e = Empty;
    floxide::Merge::merge(&mut e, Empty);
    assert_eq!(e, Empty);
}

#[test]
fn derived_merge_of_concrete_values() {
    let mut a = Tags {
        seen: BTreeSet::from([1]),
        owner: Fixed::new("alice".into()),
        ..Tags::default()
    };
    let b = Tags {
        seen: BTreeSet::from([2]),
        by_key: BTreeMap::from([(0, BTreeSet::from([7]))]),
        flags: Some(HashSet::from([3])),
        ..Tags::default()
    };
    floxide::Merge::merge(&mut a, b);
    assert_eq!(a.seen, BTreeSet::from([1, 2]));
    assert_eq!(a.by_key, BTreeMap::from([(0, BTreeSet::from([7]))]));
    assert_eq!(
        a.owner.get(),
        "alice",
        "an unset field must not clear a set one"
    );
    assert_eq!(a.flags, Some(HashSet::from([3])));
}
