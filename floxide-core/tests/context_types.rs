//! Unit tests of the provided context types: `EventLog`, `SharedState` and `Fixed`.

use std::collections::BTreeSet;
use std::time::Duration;

use floxide_core::{EventId, EventLog, Fixed, Merge, SharedState};
use serde::{Deserialize, Serialize};

fn log_of(events: impl IntoIterator<Item = u32>) -> EventLog<u32> {
    let log = EventLog::new();
    for e in events {
        log.append(e);
    }
    log
}

fn events(log: &EventLog<u32>) -> Vec<u32> {
    log.events().collect()
}

fn roundtrip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).expect("serialize")).expect("deserialize")
}

fn merged(a: &EventLog<u32>, b: &EventLog<u32>) -> EventLog<u32> {
    let mut m = a.deep_clone();
    m.merge(b.deep_clone());
    m
}

// ---- EventLog ---------------------------------------------------------------------------

#[test]
fn event_log_new_is_empty() {
    let log = EventLog::<u32>::new();
    assert!(log.is_empty());
    assert_eq!(log.len(), 0);
    assert_eq!(log.events().count(), 0);
    assert_eq!(EventLog::<u32>::default(), log);
    assert_eq!(format!("{log:?}"), "[]");
}

#[test]
fn event_log_append_preserves_order() {
    let log = EventLog::new();
    let mut returned = Vec::new();
    for e in [5u32, 3, 9, 3, 1, 100, 0] {
        returned.push(log.append_with_id(e));
    }
    assert_eq!(events(&log), vec![5, 3, 9, 3, 1, 100, 0]);
    assert_eq!(log.len(), 7);
    assert!(!log.is_empty());
    // `append_with_id` returns the id stored with the event; equal payloads get distinct ids.
    let with_ids: Vec<(EventId, u32)> = log.iter_with_ids().collect();
    assert_eq!(
        with_ids.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        returned
    );
    assert_eq!(returned.iter().collect::<BTreeSet<_>>().len(), 7);
    assert_eq!(format!("{log:?}"), "[5, 3, 9, 3, 1, 100, 0]");
}

#[test]
fn event_log_iter_is_a_snapshot() {
    let log = log_of([1, 2]);
    let it = log.events();
    let logged = log.iter();
    log.append(3);
    assert_eq!(it.collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        logged.iter().map(|e| e.event).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(events(&log), vec![1, 2, 3]);
}

#[test]
fn event_log_iter_gives_logged_events_in_log_order() {
    let log = log_of([7, 8]);
    let logged = log.iter();
    assert_eq!(logged.len(), 2);
    assert_eq!((logged[0].event, logged[1].event), (7, 8));
    assert!(logged[0].seq < logged[1].seq);
    assert_ne!(logged[0].id, logged[1].id);
}

#[test]
fn event_log_apply_all_applies_in_log_order() {
    let log = log_of([1, 2, 3, 4]);
    // Order-sensitive: the digits in log order.
    let mut digits = String::from(">");
    log.apply_all(&mut digits, |e, s: &mut String| s.push_str(&e.to_string()));
    assert_eq!(digits, ">1234");
    let mut sum = 10u32;
    log.apply_all(&mut sum, |e, acc| *acc += e);
    assert_eq!(sum, 20);
    let collected: Vec<u32> = log.apply_all_default(|e, v: &mut Vec<u32>| v.push(e * 10));
    assert_eq!(collected, vec![10, 20, 30, 40]);
    let empty: Vec<u32> =
        EventLog::<u32>::new().apply_all_default(|e, v: &mut Vec<u32>| v.push(*e));
    assert!(empty.is_empty());
}

#[test]
fn event_log_apply_all_may_append_to_the_log() {
    let log = log_of([1, 2]);
    let mut seen = 0;
    log.apply_all(&mut seen, |e, n| {
        *n += 1;
        log.append(e + 10);
    });
    assert_eq!(seen, 2);
    assert_eq!(events(&log), vec![1, 2, 11, 12]);
}

#[test]
fn event_log_fold_folds_in_log_order() {
    let log = log_of([1, 2, 3, 4]);
    let digits = log.fold(String::from(">"), |mut s, e| {
        s.push_str(&e.to_string());
        s
    });
    assert_eq!(digits, ">1234");
    assert_eq!(log.fold(10u32, |acc, e| acc + e), 20);
}

#[test]
fn event_log_clone_shares_deep_clone_does_not() {
    let log = log_of([1]);
    let shared = log.clone();
    let copy = log.deep_clone();
    shared.append(2);
    assert_eq!(events(&log), vec![1, 2]);
    assert_eq!(events(&copy), vec![1]);
    copy.append(3);
    assert_eq!(events(&log), vec![1, 2]);
}

#[test]
fn event_log_concurrent_appends_merge_to_one_order_in_every_merge_order() {
    let base = log_of([1, 2, 3]);
    let workers: Vec<EventLog<u32>> = (0..3).map(|_| base.deep_clone()).collect();
    workers[0].append(10);
    workers[0].append(11);
    workers[1].append(20);
    workers[2].append(30);
    workers[2].append(31);
    workers[2].append(32);

    let perms = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let results: Vec<EventLog<u32>> = perms
        .iter()
        .map(|p| {
            let mut acc = base.deep_clone();
            for &i in p {
                acc.merge(workers[i].deep_clone());
            }
            acc
        })
        .collect();
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    // Merging the workers into each other (not into the base) agrees too.
    let mut w = workers[2].deep_clone();
    w.merge(merged(&workers[1], &workers[0]));
    assert_eq!(w, results[0]);

    let all = events(&results[0]);
    assert_eq!(all.len(), 9);
    assert_eq!(&all[..3], &[1, 2, 3], "the common base comes first");
    let tail: BTreeSet<u32> = all[3..].iter().copied().collect();
    assert_eq!(tail, BTreeSet::from([10, 11, 20, 30, 31, 32]));
    // Each worker's own events keep their order.
    for own in [[10u32, 11].as_slice(), &[20], &[30, 31, 32]] {
        let projected: Vec<u32> = all.iter().copied().filter(|e| own.contains(e)).collect();
        assert_eq!(projected, own);
    }
}

/// Two workers append concurrently, the second one later by the wall clock. If the order
/// followed the clock, the earlier event would always come first; instead it is decided by
/// the event ids, identically in both merge orders.
#[test]
fn event_log_concurrent_order_does_not_follow_the_clock() {
    let mut later_first = 0;
    for _ in 0..64 {
        let base = log_of([0]);
        let (early, late) = (base.deep_clone(), base.deep_clone());
        let early_id = early.append_with_id(1);
        std::thread::sleep(Duration::from_millis(1));
        let late_id = late.append_with_id(2);

        let one = merged(&early, &late);
        let two = merged(&late, &early);
        assert_eq!(one, two);
        let order: Vec<(EventId, u32)> = one.iter_with_ids().skip(1).collect();
        // Concurrent events (same logical time) are ordered by id.
        let expected = if early_id < late_id {
            vec![(early_id, 1), (late_id, 2)]
        } else {
            vec![(late_id, 2), (early_id, 1)]
        };
        assert_eq!(order, expected);
        if order[0].1 == 2 {
            later_first += 1;
        }
    }
    assert!(
        later_first > 0,
        "the later event never came first in 64 trials: the order follows the clock"
    );
}

/// The stored form carries logical time and ids; the order comes from them alone, whatever
/// the order in which a store hands the entries back.
#[test]
fn event_log_order_is_logical_time_then_id() {
    let id = |n: u128| format!("{n:032x}");
    let json = format!(
        r#"[
            {{"seq": 2, "id": "{b}", "event": 21}},
            {{"seq": 1, "id": "{c}", "event": 10}},
            {{"seq": 2, "id": "{a}", "event": 20}},
            {{"seq": 3, "id": "{a2}", "event": 30}},
            {{"seq": 2, "id": "{b}", "event": 21}}
        ]"#,
        a = id(1),
        b = id(0xff),
        c = id(u128::MAX),
        a2 = id(0),
    );
    let log: EventLog<u32> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(
        events(&log),
        vec![10, 20, 21, 30],
        "duplicate kept or wrong order"
    );
    let ids: Vec<String> = log.iter_with_ids().map(|(i, _)| i.to_string()).collect();
    assert_eq!(ids, vec![id(u128::MAX), id(1), id(0xff), id(0)]);
    // Appending after these comes last.
    log.append(40);
    assert_eq!(events(&log), vec![10, 20, 21, 30, 40]);
}

#[test]
fn event_log_event_merged_twice_appears_once() {
    let base = log_of([1]);
    let mut mine = base.deep_clone();
    let theirs = base.deep_clone();
    theirs.append(2);
    mine.append(3);

    mine.merge(theirs.deep_clone());
    let once = mine.deep_clone();
    assert_eq!(mine.len(), 3);
    // The same commit again, as a fresh copy and as a deserialized copy.
    mine.merge(theirs.deep_clone());
    mine.merge(roundtrip(&theirs));
    assert_eq!(mine.len(), 3);
    assert_eq!(mine, once);
    // And the other way round: `theirs` absorbing a log that already contains it.
    let mut back = theirs.deep_clone();
    back.merge(mine.deep_clone());
    assert_eq!(back, once);
    // Merging a log into itself through a clone.
    let alias = mine.clone();
    mine.merge(alias);
    assert_eq!(mine, once);

    let mut sorted = events(&mine);
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3]);
}

#[test]
fn event_log_equal_payloads_are_distinct_events() {
    let base = EventLog::<u32>::new();
    let (a, b) = (base.deep_clone(), base.deep_clone());
    a.append(7);
    b.append(7);
    let m = merged(&a, &b);
    assert_eq!(
        events(&m),
        vec![7, 7],
        "two appends of the same value are two events"
    );
}

#[test]
fn event_log_serde_roundtrip_preserves_events_ids_and_order() {
    let base = log_of([3, 1, 2]);
    let other = base.deep_clone();
    other.append(9);
    base.append(8);
    let mut log = base.deep_clone();
    log.merge(other);
    log.append(4);

    let text = serde_json::to_string(&log).unwrap();
    let back: EventLog<u32> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, log);
    assert_eq!(events(&back), events(&log));
    assert_eq!(
        back.iter_with_ids().collect::<Vec<_>>(),
        log.iter_with_ids().collect::<Vec<_>>()
    );
    // The copy is independent and keeps appending after everything it holds.
    back.append(5);
    assert_eq!(log.len(), 6);
    assert_eq!(back.len(), 7);
    assert_eq!(events(&back).last(), Some(&5));
    assert_eq!(serde_json::to_string(&roundtrip(&log)).unwrap(), text);

    let empty: EventLog<u32> = roundtrip(&EventLog::new());
    assert!(empty.is_empty());
}

#[test]
fn event_log_rejects_bad_ids() {
    let err = serde_json::from_str::<EventLog<u32>>(r#"[{"seq":1,"id":"xyz","event":1}]"#)
        .expect_err("an invalid id must not deserialize");
    assert!(err.to_string().contains("invalid event id"), "{err}");
}

/// A log that appended after seeing another log's events orders its events after them,
/// whatever the ids and however long either history is.
#[test]
fn event_log_causal_order() {
    for _ in 0..50 {
        // A short log learns of a long one, then appends: after all of it.
        let long = log_of(0..10);
        let short = log_of([100]);
        let mut learner = short.deep_clone();
        learner.merge(long.deep_clone());
        learner.append(200);
        for view in [
            merged(&learner, &long),
            merged(&long, &learner),
            merged(&short, &learner),
        ] {
            let all = events(&view);
            assert_eq!(all.last(), Some(&200), "{all:?}");
            assert_eq!(all.len(), 12);
        }

        // A chain of causality across three workers.
        let a = log_of([1]);
        let mut b = EventLog::new();
        b.merge(a.deep_clone());
        b.append(2);
        let mut c = EventLog::new();
        c.merge(b.deep_clone());
        c.append(3);
        a.append(4); // concurrent with 2 and 3, seen by nobody
        let all = events(&merged(&merged(&c, &a), &b));
        let pos = |x: u32| all.iter().position(|e| *e == x).unwrap();
        assert!(pos(1) < pos(2) && pos(2) < pos(3), "{all:?}");
        assert_eq!(all.len(), 4);
    }
}

#[test]
fn event_log_appends_from_many_threads_through_clones() {
    let log = EventLog::<u32>::new();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..50 {
                    log.append(t * 1000 + i);
                }
            });
        }
    });
    assert_eq!(log.len(), 200);
    let all = events(&log);
    for t in 0..4u32 {
        let mine: Vec<u32> = all.iter().copied().filter(|e| e / 1000 == t).collect();
        assert_eq!(mine, (0..50).map(|i| t * 1000 + i).collect::<Vec<_>>());
    }
}

// ---- SharedState ------------------------------------------------------------------------

#[tokio::test]
async fn shared_state_mutation_is_visible_through_clones() {
    let state = SharedState::new(BTreeSet::from([1u8]));
    let other = state.clone();
    state.get().await.insert(2);
    other.get().await.insert(3);
    assert_eq!(state.snapshot().await, BTreeSet::from([1, 2, 3]));
    assert_eq!(other.snapshot().await, BTreeSet::from([1, 2, 3]));

    let n = other.update(|s| {
        s.remove(&1);
        s.len()
    });
    assert_eq!(n.await, 2);
    assert_eq!(*state.get().await, BTreeSet::from([2, 3]));

    state.set(BTreeSet::from([9])).await;
    assert_eq!(other.snapshot().await, BTreeSet::from([9]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_counter_from_many_tasks() {
    let counter = SharedState::new(0u64);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = counter.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    let mut g = c.get().await;
                    let v = *g;
                    tokio::task::yield_now().await;
                    *g = v + 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.snapshot().await, 800);
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Ctx {
    seen: SharedState<BTreeSet<u8>>,
    owner: Fixed<String>,
}

#[tokio::test]
async fn shared_state_serializes_in_async_context() {
    let state = SharedState::new(BTreeSet::from([3u8, 1, 2]));
    assert_eq!(serde_json::to_string(&state).unwrap(), "[1,2,3]");

    let ctx = Ctx {
        seen: state.clone(),
        owner: Fixed::new("me".into()),
    };
    let text = serde_json::to_string(&ctx).unwrap();
    assert_eq!(text, r#"{"seen":[1,2,3],"owner":"me"}"#);
    let back: Ctx = serde_json::from_str(&text).unwrap();
    assert_eq!(back.seen.snapshot().await, BTreeSet::from([1, 2, 3]));
    assert_eq!(back.owner.get(), "me");
    // The deserialized copy is independent.
    back.seen.get().await.insert(4);
    assert_eq!(state.snapshot().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_serializes_in_spawned_task_on_multi_thread_runtime() {
    let state = SharedState::new(vec![1u32, 2]);
    let s = state.clone();
    let text = tokio::spawn(async move {
        s.get().await.push(3);
        serde_json::to_string(&s)
    })
    .await
    .expect("the task panicked")
    .expect("serialize");
    assert_eq!(text, "[1,2,3]");
}

#[tokio::test]
async fn shared_state_serializing_while_locked_is_an_error() {
    let state = SharedState::new(BTreeSet::from([1u8]));
    let guard = state.get().await;
    let err = serde_json::to_string(&state).expect_err("serializing a locked state must fail");
    assert!(err.to_string().contains("locked"), "{err}");
    // Also through a clone and inside a context.
    let ctx = Ctx {
        seen: state.clone(),
        owner: Fixed::default(),
    };
    assert!(serde_json::to_string(&ctx).is_err());
    assert!(state.try_get().is_none());
    drop(guard);
    assert_eq!(serde_json::to_string(&state).unwrap(), "[1]");
    assert!(state.try_get().is_some());
}

#[tokio::test]
async fn shared_state_debug_shows_locked() {
    let state = SharedState::new(BTreeSet::from([1u8, 2]));
    assert_eq!(format!("{state:?}"), "SharedState({1, 2})");
    let guard = state.get().await;
    assert_eq!(format!("{state:?}"), "SharedState(<locked>)");
    assert_eq!(format!("{:?}", state.clone()), "SharedState(<locked>)");
    drop(guard);
    assert_eq!(format!("{state:?}"), "SharedState({1, 2})");
}

#[tokio::test]
async fn shared_state_merge_joins_inner_values() {
    let mut a = SharedState::new(BTreeSet::from([1u8, 2]));
    let b = SharedState::new(BTreeSet::from([2u8, 3]));
    a.merge(b);
    assert_eq!(a.snapshot().await, BTreeSet::from([1, 2, 3]));

    // Neither side is the sole owner: the target's clones see the result, `other` is intact.
    let mut target = SharedState::new(BTreeSet::from([5u8]));
    let target_clone = target.clone();
    let other = SharedState::new(BTreeSet::from([6u8]));
    target.merge(other.clone());
    assert_eq!(target_clone.snapshot().await, BTreeSet::from([5, 6]));
    assert_eq!(other.snapshot().await, BTreeSet::from([6]));

    // Merging a clone of itself changes nothing (and does not deadlock).
    let alias = target.clone();
    target.merge(alias);
    assert_eq!(target.snapshot().await, BTreeSet::from([5, 6]));

    // Inner values merge with their own join: counters under Fixed keep the set one.
    let mut f = SharedState::new(Fixed::new(0u32));
    f.merge(SharedState::new(Fixed::new(4)));
    f.merge(SharedState::new(Fixed::new(0)));
    assert_eq!(*f.snapshot().await.get(), 4);
}

#[tokio::test]
async fn shared_state_deserializes_and_try_get() {
    let state: SharedState<Vec<u8>> = serde_json::from_str("[4,5]").unwrap();
    assert_eq!(*state.try_get().unwrap(), vec![4, 5]);
    let d = SharedState::<Vec<u8>>::default();
    assert!(d.snapshot().await.is_empty());
}

// ---- Fixed ------------------------------------------------------------------------------

#[test]
fn fixed_deref_and_get() {
    let f = Fixed::new(String::from("run-7"));
    assert_eq!(f.get(), "run-7");
    assert_eq!(f.len(), 5, "deref to String");
    assert!(f.starts_with("run"));
    assert_eq!(&*f, "run-7");
    assert_eq!(format!("{f:?}"), r#"Fixed("run-7")"#);
    assert_eq!(f.clone().into_inner(), "run-7");
    assert_eq!(*Fixed::new(3u32) + 1, 4);
    assert_eq!(Fixed::<u32>::default().into_inner(), 0);
}

#[test]
fn fixed_serde_is_transparent() {
    assert_eq!(serde_json::to_string(&Fixed::new(5u32)).unwrap(), "5");
    assert_eq!(
        serde_json::to_string(&Fixed::new(String::from("a\"b"))).unwrap(),
        r#""a\"b""#
    );
    assert_eq!(
        serde_json::to_string(&Fixed::new(vec![1u8, 2])).unwrap(),
        "[1,2]"
    );
    let f: Fixed<u32> = serde_json::from_str("7").unwrap();
    assert_eq!(f, Fixed::new(7));
    let s: Fixed<String> = serde_json::from_str(r#""x""#).unwrap();
    assert_eq!(s.get(), "x");
    assert!(serde_json::from_str::<Fixed<u32>>(r#"{"0":7}"#).is_err());
    assert!(serde_json::from_str::<Fixed<u32>>("[7]").is_err());

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Config {
        limit: Fixed<u32>,
        name: Fixed<String>,
    }
    let c = Config {
        limit: Fixed::new(10),
        name: Fixed::new("n".into()),
    };
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(text, r#"{"limit":10,"name":"n"}"#);
    assert_eq!(serde_json::from_str::<Config>(&text).unwrap(), c);
}

#[test]
fn fixed_merge_keeps_the_set_value() {
    let mut unset = Fixed::<String>::default();
    unset.merge(Fixed::new("x".into()));
    assert_eq!(unset.get(), "x");
    unset.merge(Fixed::default());
    assert_eq!(unset.get(), "x", "an unset copy must not clear the value");
    unset.merge(Fixed::new("x".into()));
    assert_eq!(unset.get(), "x");
}
