//! `#[derive(Merge)]` on a named struct and on a tuple struct, without importing `Merge`.

use std::collections::{BTreeMap, BTreeSet};

use floxide::{EventLog, Fixed};

#[derive(Debug, Clone, Default, PartialEq, floxide::Merge)]
pub struct Named {
    pub tags: BTreeSet<String>,
    pub config: Fixed<u32>,
    pub nested: Tuple,
}

#[derive(Debug, Clone, Default, PartialEq, floxide::Merge)]
pub struct Tuple(
    pub BTreeSet<u32>,
    pub Option<BTreeMap<String, BTreeSet<u32>>>,
);

#[derive(Debug, Clone, Default, floxide::Merge)]
pub struct WithLog {
    pub log: EventLog<String>,
}

#[derive(Debug, Clone, Default, PartialEq, floxide::Merge)]
pub struct Unit;

fn main() {
    use floxide::Merge as _;

    let mut a = Named {
        tags: ["a".to_owned()].into(),
        config: Fixed::new(0),
        nested: Tuple([1].into(), None),
    };
    let b = Named {
        tags: ["b".to_owned()].into(),
        config: Fixed::new(7),
        nested: Tuple([2].into(), Some([("k".to_owned(), [3].into())].into())),
    };
    a.merge(b.clone());
    assert_eq!(a.tags, ["a".to_owned(), "b".to_owned()].into());
    assert_eq!(*a.config.get(), 7);
    assert_eq!(a.nested.0, [1, 2].into());
    assert_eq!(a.nested.1, b.nested.1);

    // Idempotent.
    let before = a.clone();
    a.merge(before.clone());
    assert_eq!(a, before);

    let mut x = WithLog::default();
    let y = WithLog::default();
    x.log.append("one".to_owned());
    y.log.append("two".to_owned());
    x.merge(y);
    assert_eq!(x.log.len(), 2);

    let mut u = Unit;
    u.merge(Unit);
}
