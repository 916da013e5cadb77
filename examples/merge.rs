//! Merge: parallel branches write into the context, and a join node waits for all of them.
//!
//! A request fans out to three suppliers that quote concurrently. Each supplier writes its
//! quote into the context, whose type derives `Merge`: an `EventLog` of what happened and a
//! `SharedState` holding a `#[derive(Merge)]` struct of quotes. Each branch then reaches the
//! join node, which returns `Transition::Hold` (ending that branch) until every supplier's
//! quote is in the context; the arrival that completes the set continues with the joined
//! result.
//!
//! In-process, all branches share one context value by reference, so the join sees what its
//! siblings wrote. The join records arrivals in a set, under the state's lock, and fires on
//! the arrival that completes it: exactly once, whatever order the branches finish in, and
//! even if an arrival were delivered twice. The same context type also works where branches
//! run on separate copies (a distributed run): `Merge` joins the copies, and merging a copy
//! twice changes nothing, which the end of `demo` checks.
//!
//! Run with `cargo run --example merge`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use floxide::*;
use serde::{Deserialize, Serialize};

/// The suppliers the join waits for.
const SUPPLIERS: [&str; 3] = ["acme", "globex", "initech"];

/// What happened during a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A supplier quoted a price.
    Quoted(String, u32),
    /// A branch reached the join before the others and was held.
    Held(String),
    /// The join fired.
    Joined,
}

/// The quotes, mergeable field by field: a quote is set once per supplier, and arrivals at
/// the join form a set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Merge)]
pub struct Quotes {
    /// Supplier → price, in cents.
    pub prices: BTreeMap<String, Fixed<u32>>,
    /// The suppliers whose branch has reached the join.
    pub arrived: BTreeSet<String>,
}

/// The context every branch writes into.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Merge)]
pub struct Market {
    /// Everything that happened, in order.
    pub events: EventLog<Event>,
    /// The quotes so far.
    pub quotes: SharedState<Quotes>,
}

/// The join's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestOffer {
    /// Every quote, by supplier.
    pub quotes: Vec<(String, u32)>,
    /// The cheapest supplier and its price.
    pub best: (String, u32),
}

node! {
    /// Sends the request (a product name) to every supplier.
    pub struct Request {};
    context = Market;
    input = String;
    output = String;
    |_ctx, product| { Ok(Transition::Next(product)) }
}

node! {
    /// A supplier: answers after `ms` milliseconds with a price, written into the context.
    pub struct Supplier { name: &'static str, ms: u64, cents: u32 };
    context = Market;
    input = String;
    output = String;
    |ctx, product| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        let name = self.name.to_owned();
        ctx.quotes
            .update(|q| q.prices.insert(name.clone(), Fixed::new(self.cents)))
            .await;
        ctx.events.append(Event::Quoted(name.clone(), self.cents));
        println!("{name} quotes {} cents for {product}", self.cents);
        Ok(Transition::Next(name))
    }
}

node! {
    /// The join: holds each branch until every supplier has quoted, then returns the offer.
    pub struct Join { expected: Vec<String> };
    context = Market;
    input = String;
    output = BestOffer;
    |ctx, supplier| {
        // Record the arrival and test for completion in one step under the lock, so that
        // exactly one arrival (the one that completes the set) sees it complete.
        let complete = ctx
            .quotes
            .update(|q| {
                q.arrived.insert(supplier.clone())
                    && self.expected.iter().all(|s| q.arrived.contains(s) && q.prices.contains_key(s))
            })
            .await;
        if !complete {
            println!("join: {supplier} is in, holding");
            ctx.events.append(Event::Held(supplier));
            return Ok(Transition::Hold);
        }
        let quotes: Vec<(String, u32)> = ctx
            .quotes
            .snapshot()
            .await
            .prices
            .into_iter()
            .map(|(name, cents)| (name, cents.into_inner()))
            .collect();
        let best = quotes
            .iter()
            .min_by_key(|(_, cents)| *cents)
            .cloned()
            .ok_or_else(|| FloxideError::generic("no quotes"))?;
        ctx.events.append(Event::Joined);
        println!("join: {supplier} completes the set, continuing");
        Ok(Transition::Next(BestOffer { quotes, best }))
    }
}

workflow! {
    /// Ask three suppliers at once, join their quotes.
    pub struct BestQuote {
        request: Request,
        acme: Supplier,
        globex: Supplier,
        initech: Supplier,
        join: Join,
    }
    context = Market;
    start = request;
    edges {
        request => [acme, globex, initech];
        acme => [join];
        globex => [join];
        initech => [join];
        join => [];
    }
}

/// Runs the workflow; each supplier answers after the delay given for it (in `SUPPLIERS`
/// order). Returns the joined result and the events.
async fn demo(delays_ms: [u64; 3]) -> Result<(BestOffer, Vec<Event>), FloxideError> {
    let supplier = |i: usize, cents| Supplier {
        name: SUPPLIERS[i],
        ms: delays_ms[i],
        cents,
    };
    let wf = BestQuote {
        request: Request {},
        acme: supplier(0, 1250),
        globex: supplier(1, 990),
        initech: supplier(2, 1100),
        join: Join {
            expected: SUPPLIERS.map(str::to_owned).to_vec(),
        },
    };
    let ctx = WorkflowCtx::new(Market::default());
    let offer = wf.run(&ctx, "widgets".to_owned()).await?;
    println!("joined: {offer:?}");
    let events: Vec<Event> = ctx.store.events.events().collect();

    // A copy of the context, as a worker of a distributed run would send back, merged twice:
    // the join is idempotent, so nothing is duplicated.
    let copy = || -> Result<Market, FloxideError> {
        let json = serde_json::to_string(&ctx.store).map_err(FloxideError::generic)?;
        serde_json::from_str(&json).map_err(FloxideError::generic)
    };
    let mut merged = copy()?;
    merged.merge(copy()?);
    merged.merge(copy()?);
    if merged.events.events().collect::<Vec<_>>() != events
        || merged.quotes.snapshot().await != ctx.store.quotes.snapshot().await
    {
        return Err(FloxideError::generic(
            "merging a copy twice changed the context",
        ));
    }
    Ok((offer, events))
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo([30, 10, 20]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BestOffer, Event, SUPPLIERS};

    fn count(events: &[Event], wanted: &Event) -> usize {
        events.iter().filter(|e| *e == wanted).count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_join_fires_once_with_every_quote_whatever_the_order() {
        for delays in [[30, 10, 20], [10, 20, 30], [30, 20, 10], [10, 10, 10]] {
            let (offer, events) = super::demo(delays).await.unwrap();
            assert_eq!(
                offer,
                BestOffer {
                    quotes: vec![
                        ("acme".to_owned(), 1250),
                        ("globex".to_owned(), 990),
                        ("initech".to_owned(), 1100),
                    ],
                    best: ("globex".to_owned(), 990),
                },
                "{delays:?}"
            );
            // Every supplier quoted exactly once; two branches were held, and the join fired
            // once, after every quote.
            for (name, cents) in SUPPLIERS.iter().zip([1250, 990, 1100]) {
                let quoted = Event::Quoted((*name).to_owned(), cents);
                assert_eq!(count(&events, &quoted), 1, "{delays:?}: {events:?}");
            }
            let held = events
                .iter()
                .filter(|e| matches!(e, Event::Held(_)))
                .count();
            assert_eq!(held, 2, "{delays:?}: {events:?}");
            assert_eq!(count(&events, &Event::Joined), 1, "{delays:?}: {events:?}");
            assert_eq!(events.last(), Some(&Event::Joined), "{delays:?}");
        }
    }
}
